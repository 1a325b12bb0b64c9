# -*- coding: utf-8 -*-
# vim: ft=sls
# The MAS role, a UTF8 database and pg_trgm (mas:database:manage: true).
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata as mas with context %}

mas-database-present-mas-database:
  mas.database:
    - name: {{ mas.database.name }}
    - owner: {{ mas.database.user }}
    - admin: {{ mas.database.admin | json }}
{%- if mas.database.password_set %}
    - password_pillar_key: mas:database:password
{%- endif %}
