# -*- coding: utf-8 -*-
# vim: ft=sls
# Runs syn2mas through the guarded mas_syn2mas.migrated state: check first,
# then (a real run) stop Synapse and MAS, migrate, record the phase. Already
# migrated: nothing runs. mas:syn2mas:dry_run: true runs `migrate --dry-run`.
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata as mas with context %}

mas-syn2mas-migrate-mas_syn2mas-migrated:
  mas_syn2mas.migrated:
    - name: syn2mas
    - dry_run: {{ mas.syn2mas.dry_run | json }}
    - accept_warnings: {{ mas.syn2mas.accept_warnings | json }}
    - ignore_missing_auth_providers: {{ mas.syn2mas.ignore_missing_auth_providers | json }}
    - stop_services: {{ mas.syn2mas.stop_services | json }}
    - start_synapse_after: {{ mas.syn2mas.start_synapse_after | json }}
