# -*- coding: utf-8 -*-
# vim: ft=sls
# `salt-call state.apply mas.doctor`: fails when mas-cli doctor reports an
# error (mas:doctor:strict: warnings too). Not part of `mas`: MAS and Synapse
# must be running.
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata as mas with context %}

mas-doctor-mas_doctor-healthy:
  mas_doctor.healthy:
    - name: {{ ("mas-cli doctor (" ~ mas.paths.mas_cli ~ ")") | json }}
    - strict: {{ mas.doctor.strict | json }}
