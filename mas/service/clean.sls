# -*- coding: utf-8 -*-
# vim: ft=sls
{%- set tplroot = tpldir.split("/")[0] %}
{%- set sls_synapse_clean = tplroot ~ ".synapse.clean" %}
{%- from tplroot ~ "/map.jinja" import mapdata as mas with context %}
{%- set unit = mas.paths.unit %}
{#- only a unit this formula wrote (e.g. not the playbook's of the same name) #}
{%- set ours = [{"fun": "mas.managed_by_formula", "path": unit}] %}

{#- MAS stops only once Synapse is authoritative again and the compatibility
    routes are gone. #}
include:
  - {{ sls_synapse_clean | json }}
{%- if mas.service.manage %}


mas-service-clean-service-dead:
  service.dead:
    - name: {{ mas.service.name | json }}
    - enable: false
    - onlyif: {{ ours | json }}
    - require:
      - sls: {{ sls_synapse_clean | json }}
{%- endif %}

mas-service-clean-file-absent:
  file.absent:
    - name: {{ unit | json }}
    - onlyif: {{ ours | json }}
    - require:
      - sls: {{ sls_synapse_clean | json }}
{%- if mas.service.manage %}
      - service: mas-service-clean-service-dead
{%- endif %}
