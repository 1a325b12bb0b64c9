# -*- coding: utf-8 -*-
# vim: ft=sls
# Runs syn2mas through the guarded mas_syn2mas.migrated state: check first,
# then (a real run) stop Synapse and MAS, migrate, record the phase. Already
# migrated: nothing runs. mas:syn2mas:dry_run: true runs `migrate --dry-run`.
{%- set tplroot = tpldir.split("/")[0] %}
{%- set syn2mas = salt["mas_syn2mas.options"]() %}

mas-syn2mas-migrate-mas-syn2mas-migrated:
  mas_syn2mas.migrated:
    - name: syn2mas
    - dry_run: {{ syn2mas.dry_run | tojson }}
    - accept_warnings: {{ syn2mas.accept_warnings | tojson }}
    - ignore_missing_auth_providers: {{ syn2mas.ignore_missing_auth_providers | tojson }}
    - stop_services: {{ syn2mas.stop_services | tojson }}
    - start_synapse_after: {{ syn2mas.start_synapse_after | tojson }}
