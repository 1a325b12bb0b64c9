# -*- coding: utf-8 -*-
# vim: ft=sls
# The systemd unit of MAS (docker or binary runtime); both run
# `mas-cli config check` before starting the server.
{%- set tplroot = tpldir.split("/")[0] %}
{%- set sls_config = tplroot ~ ".config" %}
{%- from tplroot ~ "/map.jinja" import mapdata as mas with context %}

include:
  - {{ sls_config }}

mas-service-unit-file-managed:
  file.managed:
    - name: {{ mas.paths.unit | json }}
    - source:
{%- for source in salt["mas.files_switch"](["unit.service.jinja"], "mas-service-unit-file-managed", tplroot) %}
      - {{ source | json }}
{%- endfor %}
    - template: jinja
    - makedirs: true
    - user: root
    - group: root
    - mode: '0644'
    - context:
        name: {{ mas.service.name | json }}
        runtime: {{ mas.runtime | json }}
        binary: {{ mas.paths.mas_binary | json }}
        user: {{ mas.user | json }}
        group: {{ mas.group | json }}
        restart: {{ mas.service.restart | json }}
        paths: {{ mas.paths | json }}
        docker: {{ mas.service.docker | json }}
    - require:
      - sls: {{ sls_config }}
