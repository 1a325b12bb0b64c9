# -*- coding: utf-8 -*-
# vim: ft=sls
# Synapse's readable copy of the shared secret and the drop-in. The drop-in
# state reads Synapse's config first and refuses, changing nothing, while a
# setting Synapse rejects next to MAS is left (see mas_synapse.conflicts).
# A syn2mas guard runs before either is written: delegating refuses what would
# lock Synapse's users out (mas_syn2mas.lockout_check), removing the drop-in
# refuses a silent rollback (mas_syn2mas.rollback_check).
{%- set tplroot = tpldir.split("/")[0] %}
{%- set sls_secrets = tplroot ~ ".secrets" %}
{%- set sls_service = tplroot ~ ".service" %}
{%- from tplroot ~ "/map.jinja" import mapdata as mas with context %}
{%- set synapse = salt["mas_synapse.settings"](mas) %}

include:
  - {{ sls_secrets | json }}
  - {{ sls_service | json }}

{%- if synapse.state == "present" %}

mas-synapse-file-mas_syn2mas-safe_to_delegate:
  mas_syn2mas.safe_to_delegate:
    - name: syn2mas
    - require_in:
      - mas_secret: mas-synapse-file-mas_secret-present
      - mas_synapse: mas-synapse-file-mas_synapse-dropin
{%- else %}

mas-synapse-file-mas_syn2mas-safe_to_roll_back:
  mas_syn2mas.safe_to_roll_back:
    - name: syn2mas
    - require_in:
      - mas_secret: mas-synapse-file-mas_secret-present
      - mas_synapse: mas-synapse-file-mas_synapse-dropin
{%- endif %}

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
      - sls: {{ sls_secrets | json }}
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
      - sls: {{ sls_service | json }}
{%- if synapse.state == "present" %}

mas-synapse-file-mas_syn2mas-delegated:
  mas_syn2mas.delegated:
    - name: syn2mas
    - require:
      - mas_synapse: mas-synapse-file-mas_synapse-dropin
{%- else %}

mas-synapse-file-mas_syn2mas-rolled_back:
  mas_syn2mas.rolled_back:
    - name: syn2mas
    - require:
      - mas_synapse: mas-synapse-file-mas_synapse-dropin
{%- endif %}
