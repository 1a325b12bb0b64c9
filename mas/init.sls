# -*- coding: utf-8 -*-
# vim: ft=sls
# Meta-state: deploy MAS when mas:enabled is true, remove it (mas.clean) when false.
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata as mas with context %}

include:
{%- if mas.enabled %}
  - .install
  - .secrets
  - .config
{%- if mas.database.manage %}
  - .database
{%- endif %}
  - .service
  - .synapse
  - .proxy
{%- if mas.users or mas.registration_tokens %}
  - .users
{%- endif %}
{%- else %}
  - .clean
{#- Synapse is authoritative: mas:users are registered there #}
{%- if mas.users %}
  - .users
{%- endif %}
{%- endif %}
