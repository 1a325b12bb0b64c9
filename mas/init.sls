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
{%- if mas.doctor.after_apply %}
  - .doctor
{%- endif %}
{%- else %}
  - .clean
{#- Synapse is authoritative: mas:users are registered there #}
{%- if mas.users %}
  - .users
{%- endif %}
{%- endif %}
{%- if mas.enabled and mas.doctor.after_apply %}

# mas:doctor:after_apply: the run ends with the doctor, once everything else is in place
extend:
  mas-doctor-mas_doctor-healthy:
    mas_doctor.healthy:
      - require:
{%- for sls in ["service", "synapse", "proxy"] + (["users"] if mas.users else []) %}
        - sls: {{ (tplroot ~ "." ~ sls) | json }}
{%- endfor %}
{%- endif %}
