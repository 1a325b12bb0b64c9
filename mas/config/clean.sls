# -*- coding: utf-8 -*-
# vim: ft=sls
{%- set tplroot = tpldir.split("/")[0] %}
{%- set sls_service_clean = tplroot ~ ".service.clean" %}
{%- from tplroot ~ "/map.jinja" import mapdata as mas with context %}

include:
  - {{ sls_service_clean | json }}

{%- for item in ["config_file", "mas_cli", "register_user"] %}

{{ ("mas-config-clean-file-absent-" ~ item) | json }}:
  file.absent:
    - name: {{ mas.paths[item] | json }}
    # only what this formula wrote (e.g. not the playbook's files at the same paths)
    - onlyif:
      - fun: mas.managed_by_formula
        path: {{ mas.paths[item] | json }}
    - require:
      - sls: {{ sls_service_clean | json }}
{%- endfor %}
