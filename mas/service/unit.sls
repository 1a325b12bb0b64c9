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
    - name: {{ mas.service.unit_dir }}/{{ mas.service.name }}.service
    - source:
      - salt://{{ tplroot }}/files/mas-service-unit-file-managed/unit.service.jinja
      - salt://{{ tplroot }}/files/default/unit.service.jinja
    - template: jinja
    - makedirs: true
    - user: root
    - group: root
    - mode: '0644'
    - context:
        name: {{ mas.service.name }}
        runtime: {{ mas.runtime }}
        binary: {{ mas.binary }}
        user: {{ mas.user }}
        group: {{ mas.group }}
        restart: {{ mas.service.restart }}
        paths: {{ mas.paths | json }}
        docker: {{ mas.service.docker | json }}
    - require:
      - sls: {{ sls_config }}
