# -*- coding: utf-8 -*-
# vim: ft=sls
# Starts MAS and restarts it only when its config, secrets, keys or unit
# changed. With mas:service:manage false, starting and stopping is left to
# the operator's own supervisor.
{%- set tplroot = tpldir.split("/")[0] %}
{%- set sls_unit = tplroot ~ ".service.unit" %}
{%- set sls_database = tplroot ~ ".database" %}
{%- from tplroot ~ "/map.jinja" import mapdata as mas with context %}

include:
  - {{ sls_unit | json }}
{%- if mas.database.manage %}
  - {{ sls_database | json }}
{%- endif %}
{%- if mas.service.manage and salt["mas_syn2mas.phase"]() == "migrating" %}

mas-service-running-test-nop-syn2mas:
  test.nop:
    - name: "MAS is not started while a syn2mas migration is unfinished (salt-call mas_syn2mas.status)"
    - require:
      - sls: {{ sls_unit | json }}
{%- elif mas.service.manage %}
{%- if mas.runtime == "docker" %}

mas-service-running-mas-image_present:
  mas.image_present:
    - name: {{ mas.image | json }}
    - command: {{ mas.service.docker.command | json }}
    - require:
      - sls: {{ sls_unit | json }}
{%- endif %}

mas-service-running-service-running:
  service.running:
    - name: {{ mas.service.name | json }}
    - enable: true
    - require:
{%- if mas.database.manage %}
      - sls: {{ sls_database | json }}
{%- endif %}
{%- if mas.runtime == "docker" %}
      - mas: mas-service-running-mas-image_present
{%- else %}
      - sls: {{ sls_unit | json }}
{%- endif %}
    # by state ID: an `sls:` requisite would also match every state the
    # included SLS include (Salt 3008), e.g. the directories of mas.install
    - watch:
      - file: mas-service-unit-file-managed
      - file: mas-config-file-file-managed
{%- if mas.paths.release_dir %}
      # a new release: its directory is new, so the unit and config.yaml
      # change with it and MAS restarts once, on the new binary
      - archive: mas-install-binary-archive-extracted
{%- endif %}
{%- for secret in mas.secret_files %}
      - mas_secret: {{ ("mas-secrets-file-mas_secret-present-" ~ secret.name) | json }}
{%- endfor %}
{%- else %}

mas-service-running-test-nop:
  test.nop:
    - name: {{ ("mas:service:manage is false; start " ~ mas.service.name ~ " with your own supervisor") | json }}
    - require:
      - sls: {{ sls_unit | json }}
{%- endif %}
