# -*- coding: utf-8 -*-
# vim: ft=sls
# Reloads the proxy only when one of its files changed (mas:proxy:reload);
# nginx's whole configuration is tested first.
{%- set tplroot = tpldir.split("/")[0] %}
{%- set sls_proxy_file = tplroot ~ ".proxy.file" %}
{%- from tplroot ~ "/map.jinja" import mapdata as mas with context %}
{%- set proxy = salt["mas_proxy.settings"](mas) %}

include:
  - {{ sls_proxy_file | json }}
{#- onchanges by state ID: an `sls:` requisite would also match every state
    the included SLS include (Salt 3008), reloading on any MAS change #}
{%- if proxy.files and proxy.reload %}
{%- if proxy.check %}

mas-proxy-reload-module-run-check:
  module.run:
    - mas_proxy.check:
      - argv: {{ proxy.check | json }}
    - onchanges:
{%- for file in proxy.files %}
      - file: {{ ("mas-proxy-file-file-managed-" ~ file.name) | json }}
{%- endfor %}
{%- endif %}

mas-proxy-reload-module-run-reload:
  module.run:
    - service.reload:
      - name: {{ proxy.service | json }}
    - onchanges:
{%- for file in proxy.files %}
      - file: {{ ("mas-proxy-file-file-managed-" ~ file.name) | json }}
{%- endfor %}
{%- if proxy.check %}
    - require:
      - module: mas-proxy-reload-module-run-check
{%- endif %}
{%- elif not (proxy.leftovers and proxy.reload) %}

mas-proxy-reload-test-nop:
  test.nop:
    - name: No proxy reload (mas:proxy:reload is false or mas:proxy:type is none)
    - require:
      - sls: {{ sls_proxy_file | json }}
{%- endif %}
{%- if proxy.reload %}
{#- the proxy whose files were left by another type (emptied or removed above) #}
{%- for group in proxy.leftover_reloads %}
{%- if group.check %}

{{ ("mas-proxy-reload-module-run-check-leftover-" ~ group.kind) | json }}:
  module.run:
    - mas_proxy.check:
      - argv: {{ group.check | json }}
    - onchanges:
{%- for id in group.ids %}
      - file: {{ id | json }}
{%- endfor %}
{%- endif %}

{{ ("mas-proxy-reload-module-run-reload-leftover-" ~ group.kind) | json }}:
  module.run:
    - service.reload:
      - name: {{ group.service | json }}
    - onchanges:
{%- for id in group.ids %}
      - file: {{ id | json }}
{%- endfor %}
{%- if group.check %}
    - require:
      - module: {{ ("mas-proxy-reload-module-run-check-leftover-" ~ group.kind) | json }}
{%- endif %}
{%- endfor %}
{%- endif %}
