# -*- coding: utf-8 -*-
# vim: ft=sls
# Takes the routes to MAS out of the proxy (the compatibility routes first, so
# logins go back to Synapse) and reloads it when something changed. nginx
# snippets that exist are emptied, not deleted (an `include` of a missing file
# breaks nginx); the Traefik file is removed.
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata as mas with context %}
{%- set proxy = salt["mas_proxy.settings"](mas, clean=True) %}
{%- for file in proxy.files %}
{%- if file.action == "empty" %}

{{ ("mas-proxy-clean-file-managed-" ~ file.name) | json }}:
  file.managed:
    - name: {{ file.path | json }}
    - create: false
    - contents: {{ salt["mas.render"]([file.template], "mas-proxy-file-file-managed-" ~ file.name, {
          "server": "", "route": file.context}, tplroot) | json }}
{%- else %}

{{ ("mas-proxy-clean-file-absent-" ~ file.name) | json }}:
  file.absent:
    - name: {{ file.path | json }}
{%- endif %}
{%- else %}

mas-proxy-clean-test-nop:
  test.nop:
    - name: mas:proxy:type is none; no proxy file to clean
{%- endfor %}
{%- if proxy.files and proxy.reload %}
{%- if proxy.check %}

mas-proxy-clean-module-run-check:
  module.run:
    - mas_proxy.check:
      - argv: {{ proxy.check | json }}
    - onchanges:
{%- for file in proxy.files %}
      - file: {{ ("mas-proxy-clean-file-" ~ ("managed" if file.action == "empty" else "absent") ~ "-" ~ file.name) | json }}
{%- endfor %}
{%- endif %}

mas-proxy-clean-module-run-reload:
  module.run:
    - service.reload:
      - name: {{ proxy.service | json }}
    - onchanges:
{%- for file in proxy.files %}
      - file: {{ ("mas-proxy-clean-file-" ~ ("managed" if file.action == "empty" else "absent") ~ "-" ~ file.name) | json }}
{%- endfor %}
{%- if proxy.check %}
    - require:
      - module: mas-proxy-clean-module-run-check
{%- endif %}
{%- endif %}
