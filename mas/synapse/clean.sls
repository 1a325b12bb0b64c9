# -*- coding: utf-8 -*-
# vim: ft=sls
# Removes the drop-in (Synapse becomes authoritative again) and Synapse's copy
# of the shared secret, after the compatibility routes are gone, and restarts
# Synapse when something was removed (mas:synapse:restart). Only what the
# formula wrote is removed (a file of the same name it did not write stays).
# The syn2mas rollback guard runs before any of it (mas_syn2mas.rollback_check).
{%- set tplroot = tpldir.split("/")[0] %}
{%- set sls_proxy_clean = tplroot ~ ".proxy.clean" %}
{%- from tplroot ~ "/map.jinja" import mapdata as mas with context %}
{%- set synapse = salt["mas_synapse.settings"](mas) %}

include:
  - {{ sls_proxy_clean | json }}

{#- the guard goes first: before the compatibility routes, the drop-in and a
    purge of the whole tree (mas.install.clean, outside this chain) #}
mas-synapse-clean-mas_syn2mas-safe_to_roll_back:
  mas_syn2mas.safe_to_roll_back:
    - name: syn2mas
    - require_in:
      - sls: {{ sls_proxy_clean | json }}
      - sls: {{ (tplroot ~ ".install.clean") | json }}
      - file: mas-synapse-clean-file-absent-dropin

mas-synapse-clean-file-absent-dropin:
  file.absent:
    - name: {{ synapse.dropin | json }}
    - onlyif:
      - fun: mas.managed_by_formula
        path: {{ synapse.dropin | json }}
    - require:
      - sls: {{ sls_proxy_clean | json }}

mas-synapse-clean-file-absent-secret:
  file.absent:
    - name: {{ synapse.secret.path | json }}
    - unless:
      - fun: mas_secret.foreign
        path: {{ synapse.secret.path | json }}
        kind: copy
        source: {{ synapse.secret.source | json }}
        owner: {{ mas.secret_owner | json }}
    - require:
      - file: mas-synapse-clean-file-absent-dropin

mas-synapse-clean-mas_syn2mas-rolled_back:
  mas_syn2mas.rolled_back:
    - name: syn2mas
    - require:
      - file: mas-synapse-clean-file-absent-dropin
{%- if synapse.restart %}

mas-synapse-clean-module-run:
  module.run:
    - service.restart:
      - name: {{ synapse.service | json }}
    - onchanges:
      - file: mas-synapse-clean-file-absent-dropin
{%- endif %}
