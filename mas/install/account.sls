# -*- coding: utf-8 -*-
# vim: ft=sls
# The service account and the directory tree under mas:base_path.
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata as mas with context %}

{#- An existing group and account are left exactly as they are (home, shell
    and groups are the operator's): the states only note it, which also keeps
    a no-change run cheap; missing ones are created as system accounts. #}
{%- set account = salt["mas.account"](mas.user, mas.group) %}
mas-install-account-group-present:
{%- if account.group %}
  test.nop:
    - name: {{ ("group " ~ mas.group ~ " exists; left as it is") | json }}
{%- else %}
  group.present:
    - name: {{ mas.group | json }}
    - system: true
{%- endif %}

mas-install-account-user-present:
{%- if account.user %}
  test.nop:
    - name: {{ ("user " ~ mas.user ~ " exists; left as it is") | json }}
{%- else %}
  user.present:
    - name: {{ mas.user | json }}
    - gid: {{ mas.group | json }}
    - system: true
    - createhome: false
    - home: {{ mas.paths.data_dir | json }}
    - shell: /usr/sbin/nologin
{%- endif %}
    - require:
      - mas-install-account-group-present

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
      - mas-install-account-user-present
{%- endfor %}
