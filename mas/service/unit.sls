# -*- coding: utf-8 -*-
# vim: ft=sls
# The systemd unit of MAS (docker or binary runtime); both run
# `mas-cli config check` before starting the server.
{%- set tplroot = tpldir.split("/")[0] %}
{%- set sls_config = tplroot ~ ".config" %}
{%- from tplroot ~ "/map.jinja" import mapdata as mas with context %}

include:
  - {{ sls_config | json }}

mas-service-unit-file-managed:
  file.managed:
    - name: {{ mas.paths.unit | json }}
    - contents: {{ salt["mas.render"](["unit.service.jinja"], "mas-service-unit-file-managed", {
          "name": mas.service.name, "runtime": mas.runtime, "binary": mas.paths.mas_binary, "user": mas.user,
          "group": mas.group, "restart": mas.service.restart, "paths": mas.paths,
          "docker": mas.service.docker}, tplroot) | json }}
    - makedirs: true
    - user: root
    - group: root
    - mode: '0644'
    - require:
      - sls: {{ sls_config | json }}
