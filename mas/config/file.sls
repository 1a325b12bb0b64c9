# -*- coding: utf-8 -*-
# vim: ft=sls
# MAS's config.yaml (no secret inside) and the bin/ wrappers.
{%- set tplroot = tpldir.split("/")[0] %}
{%- set sls_secrets = tplroot ~ ".secrets" %}
{%- from tplroot ~ "/map.jinja" import mapdata as mas with context %}
{#- the server container carries Traefik's routers as labels (docker provider) #}
{%- set labels = salt["mas_proxy.settings"](mas)["labels"] if mas.proxy.type == "traefik" else {} %}
{#- bin/register-user runs this minion's salt-call (mas_user.register routes by phase) #}
{%- set salt_wrapper = salt["mas_user.wrapper_settings"]() %}

include:
  - {{ sls_secrets | json }}

mas-config-file-file-managed:
  file.managed:
    - name: {{ mas.paths.config_file | json }}
    - contents: {{ salt["mas.render"](["config.yaml.jinja"], "mas-config-file-file-managed", {
          "mas_config": mas.mas_config}, tplroot) | json }}
    - user: root
    - group: {{ mas.group | json }}
    - mode: '0640'
    - require:
      - sls: {{ sls_secrets | json }}

{%- for wrapper, template in [("mas_cli", "mas-cli.sh.jinja"), ("register_user", "register-user.sh.jinja")] %}

{{ ("mas-config-file-file-managed-" ~ wrapper) | json }}:
  file.managed:
    - name: {{ mas.paths[wrapper] | json }}
    - contents: {{ salt["mas.render"]([template], "mas-config-file-file-managed-" ~ wrapper, {
          "paths": mas.paths, "runtime": mas.runtime, "image": mas.image, "binary": mas.paths.mas_binary,
          "user": mas.user, "group": mas.group, "docker": mas.service.docker,
          "labels_file": (mas.paths.labels_file if labels else ""), "salt_call": salt_wrapper.salt_call,
          "salt_config_dir": salt_wrapper.config_dir}, tplroot) | json }}
    - user: root
    - group: root
    - mode: '0755'
    - require:
      - sls: {{ sls_secrets | json }}
{%- endfor %}
{%- if labels %}

mas-config-file-file-managed-labels:
  file.managed:
    - name: {{ mas.paths.labels_file | json }}
    - contents: {{ salt["mas.render"](["docker.labels.jinja"], "mas-config-file-file-managed-labels", {
          "labels": labels}, tplroot) | json }}
    - user: root
    - group: {{ mas.group | json }}
    - mode: '0640'
    - require:
      - sls: {{ sls_secrets | json }}
{%- else %}

mas-config-file-file-absent-labels:
  file.absent:
    - name: {{ mas.paths.labels_file | json }}
{%- endif %}
