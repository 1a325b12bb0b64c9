# -*- coding: utf-8 -*-
# vim: ft=sls
# Restarts Synapse only when its drop-in changed, or its copy of the shared
# secret changed while a drop-in is in place (mas:synapse:restart); a stopped
# Synapse is not started otherwise. A failed restart fails the run and says so.
{%- set tplroot = tpldir.split("/")[0] %}
{%- set sls_synapse_file = tplroot ~ ".synapse.file" %}
{%- from tplroot ~ "/map.jinja" import mapdata as mas with context %}
{%- set synapse = salt["mas_synapse.settings"](mas) %}

include:
  - {{ sls_synapse_file | json }}
{%- if synapse.restart %}

mas-synapse-restart-module-run:
  module.run:
    - service.restart:
      - name: {{ synapse.service | json }}
    # by state ID: an `sls:` requisite would also match every state the
    # included SLS include (Salt 3008), restarting Synapse on any MAS change
    - onchanges:
{%- if synapse.state == "present" %}
      - mas_secret: mas-synapse-file-mas_secret-present
{%- endif %}
      - mas_synapse: mas-synapse-file-mas_synapse-dropin

mas-synapse-restart-test-fail_without_changes:
  test.fail_without_changes:
    - name: synapse-restart-failed
    - comment: {{ ("Synapse (" ~ synapse.service ~ ") did not restart after its drop-in or secret copy changed: "
                   ~ "it may be DOWN and users cannot log in. Read its log (journalctl -u " ~ synapse.service
                   ~ "), fix it, then start it: salt-call service.start " ~ synapse.service) | json }}
    - onfail:
      - module: mas-synapse-restart-module-run
{%- else %}

mas-synapse-restart-test-nop:
  test.nop:
    - name: {{ ("mas:synapse:restart is false; restart " ~ synapse.service ~ " yourself after its drop-in changes") | json }}
    - require:
      - sls: {{ sls_synapse_file | json }}
{%- endif %}
