# -*- coding: utf-8 -*-
# vim: ft=sls
# The service account and the directory tree under mas:base_path.
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata as mas with context %}

mas-install-account-group-present:
  group.present:
    - name: {{ mas.group | json }}
    - system: true

{#- An existing account is left exactly as it is (its home, shell and groups
    are the operator's); a missing one is created as a system account. #}
mas-install-account-user-present:
  user.present:
    - name: {{ mas.user | json }}
{%- if not salt["user.info"](mas.user) %}
    - gid: {{ mas.group | json }}
    - system: true
    - createhome: false
    - home: {{ mas.paths.data_dir | json }}
    - shell: /usr/sbin/nologin
{%- else %}
    - remove_groups: false
{%- endif %}
    - require:
      - group: mas-install-account-group-present

{#- Only data/ belongs to the service account: the directories holding the
    config, secrets and keys are root's (MAS reads them through its group),
    so the account can never plant a link that root would follow. #}
{%- for dir, group, mode in [("base", "root", "0755"), ("bin_dir", "root", "0755"),
                             ("config_dir", mas.group, "0750"), ("secrets_dir", mas.group, "0750"),
                             ("keys_dir", mas.group, "0750"), ("data_dir", mas.group, "0750"),
                             ("state_dir", "root", "0700")] %}

{{ ("mas-install-account-file-directory-" ~ dir) | json }}:
  file.directory:
    - name: {{ mas.paths[dir] | json }}
    - user: {{ (mas.user if dir == "data_dir" else "root") | json }}
    - group: {{ group | json }}
    - mode: {{ mode | json }}
    - makedirs: true
    - require:
      - user: mas-install-account-user-present
{%- endfor %}
