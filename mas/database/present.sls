# -*- coding: utf-8 -*-
# vim: ft=sls
# The MAS role, a UTF8 database and pg_trgm (mas:database:manage: true).
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata as mas with context %}

mas-database-present-mas_db-present:
  mas_db.present:
    - name: {{ mas.database.name | json }}
    - owner: {{ mas.database.user | json }}
    - admin: {{ mas.database.admin | json }}
    - password_pillar_key: {{ ("mas:database:password" if mas.database.password_set else none) | json }}
