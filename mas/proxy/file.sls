# -*- coding: utf-8 -*-
# vim: ft=sls
# The proxy files (nginx snippets or a Traefik dynamic configuration). They
# wait for the Synapse side, so that logins only reach MAS once Synapse
# delegates to it.
{%- set tplroot = tpldir.split("/")[0] %}
{%- set sls_synapse = tplroot ~ ".synapse" %}
{%- from tplroot ~ "/map.jinja" import mapdata as mas with context %}
{%- set proxy = salt["mas_proxy.settings"](mas) %}

include:
  - {{ sls_synapse }}
{%- for file in proxy.files %}

{{ ("mas-proxy-file-file-managed-" ~ file.name) | json }}:
  file.managed:
    - name: {{ file.path | json }}
    - source:
{%- for source in salt["mas.files_switch"]([file.template], "mas-proxy-file-file-managed-" ~ file.name, tplroot) %}
      - {{ source | json }}
{%- endfor %}
    - template: jinja
    - makedirs: true
    - user: root
    - group: root
    - mode: '0644'
    - context:
        server: {{ file.server | json }}
        route: {{ file.context | json }}
    - require:
      - sls: {{ sls_synapse }}
{%- else %}

mas-proxy-file-test-nop:
  test.nop:
    - name: {{ ("mas:proxy:type is none; route the compatibility paths and " ~ mas.path_prefix ~ " to MAS yourself") | json }}
    - require:
      - sls: {{ sls_synapse }}
{%- endfor %}
