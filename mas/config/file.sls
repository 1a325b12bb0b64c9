# -*- coding: utf-8 -*-
# vim: ft=sls
# MAS's config.yaml (no secret inside) and the bin/ wrappers.
{%- set tplroot = tpldir.split("/")[0] %}
{%- set sls_secrets = tplroot ~ ".secrets" %}
{%- from tplroot ~ "/map.jinja" import mapdata as mas with context %}
{#- the server container carries Traefik's routers as labels (docker provider) #}
{%- set labels = salt["mas_synapse.proxy_settings"](mas)["labels"] if mas.proxy.type == "traefik" else {} %}

include:
  - {{ sls_secrets }}

mas-config-file-file-managed:
  file.managed:
    - name: {{ mas.paths.config_file }}
    - source:
      - salt://{{ tplroot }}/files/mas-config-file-file-managed/config.yaml.jinja
      - salt://{{ tplroot }}/files/default/config.yaml.jinja
    - template: jinja
    - user: root
    - group: {{ mas.group }}
    - mode: '0640'
    - context:
        mas_config: {{ mas.mas_config | json }}
    - require:
      - sls: {{ sls_secrets }}

{%- for wrapper in ["mas_cli", "register_user"] %}

mas-config-file-file-managed-{{ wrapper }}:
  file.managed:
    - name: {{ mas.paths[wrapper] }}
    - source:
      - salt://{{ tplroot }}/files/mas-config-file-file-managed-{{ wrapper }}/{{ wrapper | replace("_", "-") }}.sh.jinja
      - salt://{{ tplroot }}/files/default/{{ wrapper | replace("_", "-") }}.sh.jinja
    - template: jinja
    - user: root
    - group: root
    - mode: '0755'
    - context:
        paths: {{ mas.paths | json }}
        runtime: {{ mas.runtime }}
        image: {{ mas.image }}
        binary: {{ mas.binary }}
        user: {{ mas.user }}
        group: {{ mas.group }}
        docker: {{ mas.service.docker | json }}
        labels_file: {{ (mas.paths.labels_file if labels else "") | json }}
    - require:
      - sls: {{ sls_secrets }}
{%- endfor %}
{%- if labels %}

mas-config-file-file-managed-labels:
  file.managed:
    - name: {{ mas.paths.labels_file }}
    - source:
      - salt://{{ tplroot }}/files/mas-config-file-file-managed-labels/docker.labels.jinja
      - salt://{{ tplroot }}/files/default/docker.labels.jinja
    - template: jinja
    - user: root
    - group: {{ mas.group }}
    - mode: '0640'
    - context:
        labels: {{ labels | json }}
    - require:
      - sls: {{ sls_secrets }}
{%- else %}

mas-config-file-file-absent-labels:
  file.absent:
    - name: {{ mas.paths.labels_file }}
{%- endif %}
