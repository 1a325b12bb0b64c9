# -*- coding: utf-8 -*-
# vim: ft=sls
# Users listed in mas:users (bots, bridges, admins): registered in MAS through
# its admin API once MAS is up. Suppressed while mas:migration_in_progress is
# true: syn2mas copies Synapse's users and needs an empty MAS database.
{%- set tplroot = tpldir.split("/")[0] %}
{%- set sls_service = tplroot ~ ".service" %}
{%- from tplroot ~ "/map.jinja" import mapdata as mas with context %}

include:
  - {{ sls_service }}
{%- if mas.migration_in_progress %}

mas-users-test-nop:
  test.nop:
    - name: mas:users are not registered while mas:migration_in_progress is true (syn2mas brings them over)
{%- else %}

{%- for user in mas.users %}

{{ ("mas-users-mas_user-present-" ~ user.username) | json }}:
  mas_user.present:
    - name: {{ user.username | json }}
    - admin: {{ user.admin | json }}
    - emails: {{ user.emails | json }}
    - password_pillar_key: {{ user.password_pillar_key | json }}
    - require:
      - sls: {{ sls_service }}
{%- endfor %}
{%- endif %}
