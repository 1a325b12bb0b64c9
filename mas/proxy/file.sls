# -*- coding: utf-8 -*-
# vim: ft=sls
# The proxy files (nginx snippets or a Traefik dynamic configuration). They
# wait for the Synapse side, so that logins only reach MAS once Synapse
# delegates to it. Files another proxy type left (a switch from nginx to
# Traefik, or back) are emptied (nginx) or removed (Traefik) in the same run.
{%- set tplroot = tpldir.split("/")[0] %}
{%- set sls_synapse = tplroot ~ ".synapse" %}
{%- from tplroot ~ "/map.jinja" import mapdata as mas with context %}
{%- set proxy = salt["mas_proxy.settings"](mas) %}

include:
  - {{ sls_synapse | json }}
{%- for file in proxy.files %}

{{ ("mas-proxy-file-file-managed-" ~ file.name) | json }}:
  file.managed:
    - name: {{ file.path | json }}
    - contents: {{ salt["mas.render"]([file.template], "mas-proxy-file-file-managed-" ~ file.name, {
          "server": file.server, "route": file.context}, tplroot) | json }}
    - makedirs: true
    - user: root
    - group: root
    - mode: '0644'
    - require:
      - sls: {{ sls_synapse | json }}
{%- else %}

mas-proxy-file-test-nop:
  test.nop:
    - name: {{ ("mas:proxy:type is none; route the compatibility paths and " ~ mas.path_prefix ~ " to MAS yourself") | json }}
    - require:
      - sls: {{ sls_synapse | json }}
{%- endfor %}
{%- for file in proxy.leftovers %}
{%- if file.action == "empty" %}

{{ file.id | json }}:
  file.managed:
    - name: {{ file.path | json }}
    - create: false
    - contents: {{ salt["mas.render"]([file.template], "mas-proxy-file-file-managed-" ~ file.name, {
          "server": "", "route": file.context}, tplroot) | json }}
{%- else %}

{{ file.id | json }}:
  file.absent:
    - name: {{ file.path | json }}
{%- endif %}
{%- endfor %}
