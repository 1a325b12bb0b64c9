# -*- coding: utf-8 -*-
# vim: ft=sls
# Secrets and signing keys: taken from pillar (read on the minion by the
# mas.secret state, never passed through this file) or generated once.
{%- set tplroot = tpldir.split("/")[0] %}
{%- set sls_install = tplroot ~ ".install" %}
{%- from tplroot ~ "/map.jinja" import mapdata as mas with context %}

include:
  - {{ sls_install }}

{%- for secret in mas.secret_files %}

mas-secrets-file-mas-secret-{{ secret.name }}:
  mas.secret:
    - name: {{ secret.path }}
    - kind: {{ secret.kind }}
{%- if secret.pillar_key %}
    - pillar_key: {{ secret.pillar_key }}
{%- endif %}
    - user: {{ secret.user }}
    - group: {{ secret.group }}
    - mode: '{{ secret.mode }}'
{%- if secret.allow_rotation is defined %}
    - allow_rotation: {{ secret.allow_rotation | tojson }}
{%- endif %}
{%- if secret.kind == "pepper" %}
    - synapse:
        config_files: {{ mas.synapse.config_files | json }}
        config_dir: {{ mas.synapse.config_dir | json }}
        extra_config_from_pillar: true
{%- endif %}
    - require:
      - sls: {{ sls_install }}
{%- endfor %}
