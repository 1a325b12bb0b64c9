# -*- coding: utf-8 -*-
# vim: ft=sls
# Synapse's readable copy of the shared secret and the drop-in. The drop-in
# state reads Synapse's config first and refuses, changing nothing, while a
# setting Synapse rejects next to MAS is left (see mas_synapse.conflicts).
{%- set tplroot = tpldir.split("/")[0] %}
{%- set sls_secrets = tplroot ~ ".secrets" %}
{%- set sls_service = tplroot ~ ".service" %}
{%- from tplroot ~ "/map.jinja" import mapdata as mas with context %}
{%- set synapse = salt["mas_synapse.settings"](mas) %}

include:
  - {{ sls_secrets }}
  - {{ sls_service }}

mas-synapse-file-file-directory-secret:
  file.directory:
    - name: {{ synapse.secret.dir | json }}
    - makedirs: true

mas-synapse-file-mas_secret-present:
  mas_secret.present:
    - name: {{ synapse.secret.path | json }}
    - kind: copy
    - source: {{ synapse.secret.source | json }}
    - user: {{ synapse.secret.user | json }}
    - group: {{ synapse.secret.group | json }}
    - mode: {{ synapse.secret.mode | json }}
    - owner: {{ mas.secret_owner | json }}
    - require:
      - sls: {{ sls_secrets }}
      - file: mas-synapse-file-file-directory-secret

mas-synapse-file-mas_synapse-dropin:
  mas_synapse.dropin:
    - name: {{ synapse.dropin | json }}
    - endpoint: {{ synapse.endpoint | json }}
    - secret_path: {{ synapse.secret.path | json }}
    - config_files: {{ synapse.config_files | json }}
    - config_dir: {{ synapse.config_dir | json }}
    - migrating: {{ (synapse.state == "absent") | json }}
    - require:
      - mas_secret: mas-synapse-file-mas_secret-present
      - sls: {{ sls_service }}
{%- if synapse.state == "present" %}
{%- if salt["mas_syn2mas.phase"]() == "migrating" %}

mas-synapse-file-test-fail_without_changes-syn2mas:
  test.fail_without_changes:
    - name: syn2mas-unfinished
    - comment: >-
        The last syn2mas migration did not finish (salt-call mas_syn2mas.status):
        Synapse must not delegate to MAS yet. Set mas:migration_in_progress: true,
        apply mas, then run state.apply mas.syn2mas again.
    - require_in:
      - mas_synapse: mas-synapse-file-mas_synapse-dropin
{%- endif %}

mas-synapse-file-mas_syn2mas-delegated:
  mas_syn2mas.delegated:
    - name: syn2mas
    - require:
      - mas_synapse: mas-synapse-file-mas_synapse-dropin
{%- endif %}
