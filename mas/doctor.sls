# -*- coding: utf-8 -*-
# vim: ft=sls
# `salt-call state.apply mas.doctor`: waits up to mas:doctor:wait seconds for
# MAS's /health and Synapse, then checks the whole deployment (mas_doctor.run)
# and fails on an error (mas:doctor:strict: on a warning too). Included last
# by `mas` when mas:doctor:after_apply is true.
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata as mas with context %}

mas-doctor-mas_doctor-healthy:
  mas_doctor.healthy:
    - name: {{ ("doctor of " ~ mas.public_base) | json }}
    - strict: {{ mas.doctor.strict | json }}
    - wait: {{ mas.doctor.wait | json }}
    - timeout: {{ mas.doctor.timeout | json }}
