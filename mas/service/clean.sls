# -*- coding: utf-8 -*-
# vim: ft=sls
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata as mas with context %}
{%- if mas.service.manage %}

mas-service-clean-service-dead:
  service.dead:
    - name: {{ mas.service.name }}
    - enable: false
{%- endif %}

mas-service-clean-file-absent:
  file.absent:
    - name: {{ mas.service.unit_dir }}/{{ mas.service.name }}.service
{%- if mas.service.manage %}
    - require:
      - service: mas-service-clean-service-dead
{%- endif %}
