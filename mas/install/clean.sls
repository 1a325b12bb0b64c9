# -*- coding: utf-8 -*-
# vim: ft=sls
# Removes the directory tree only when mas:clean:purge is true; the service
# account is kept (files elsewhere may still belong to it).
{%- set tplroot = tpldir.split("/")[0] %}
{%- set sls_secrets_clean = tplroot ~ ".secrets.clean" %}
{%- from tplroot ~ "/map.jinja" import mapdata as mas with context %}

include:
  - {{ sls_secrets_clean | json }}

{%- if mas.clean.purge %}

mas-install-clean-file-absent:
  file.absent:
    - name: {{ mas.paths.base | json }}
    - require:
      - sls: {{ sls_secrets_clean | json }}
{%- else %}

mas-install-clean-test-nop:
  test.nop:
    - name: {{ ("Keeping " ~ mas.paths.base ~ " (secrets, keys, data); set mas:clean:purge to remove it") | json }}
{%- endif %}
