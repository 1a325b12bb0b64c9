# -*- coding: utf-8 -*-
# vim: ft=sls
# Secrets and signing keys: taken from pillar (read on the minion by the
# mas_secret.present state, never passed through this file) or generated once.
# A file there that is not the formula's own is refused, never replaced; the
# client-secret files of providers that are gone are removed.
{%- set tplroot = tpldir.split("/")[0] %}
{%- set sls_install = tplroot ~ ".install" %}
{%- from tplroot ~ "/map.jinja" import mapdata as mas with context %}

include:
  - {{ sls_install | json }}

{%- for secret in mas.secret_files %}

{{ ("mas-secrets-file-mas_secret-present-" ~ secret.name) | json }}:
  mas_secret.present:
    - name: {{ secret.path | json }}
    - kind: {{ secret.kind | json }}
    - pillar_key: {{ secret.pillar_key | json }}
    - user: {{ secret.user | json }}
    - group: {{ secret.group | json }}
    - mode: {{ secret.mode | json }}
    - allow_rotation: {{ secret.allow_rotation | json }}
    - owner: {{ secret.owner | json }}
    - require:
      - sls: {{ sls_install | json }}
{%- endfor %}
{%- for path in salt["mas_secret.leftovers"](mas.paths.secrets_dir, mas.secret_files | map(attribute="path") | list) %}

{{ ("mas-secrets-file-file-absent-" ~ path.split("/")[-1]) | json }}:
  file.absent:
    - name: {{ path | json }}
    - require:
      - sls: {{ sls_install | json }}
{%- endfor %}
