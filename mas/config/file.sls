# -*- coding: utf-8 -*-
# vim: ft=sls
# MAS's config.yaml (no secret inside) and the bin/ wrappers.
{%- set tplroot = tpldir.split("/")[0] %}
{%- set sls_secrets = tplroot ~ ".secrets" %}
{%- from tplroot ~ "/map.jinja" import mapdata as mas with context %}
{#- the server container carries Traefik's routers as labels (docker provider) #}
{%- set labels = salt["mas_proxy.settings"](mas)["labels"] if mas.proxy.type == "traefik" else {} %}
{#- bin/register-user runs this minion's salt-call (mas_user.register routes by phase) #}
{%- set salt_wrapper = salt["mas_user.wrapper_settings"]() %}

include:
  - {{ sls_secrets }}

mas-config-file-file-managed:
  file.managed:
    - name: {{ mas.paths.config_file | json }}
    - source:
{%- for source in salt["mas.files_switch"](["config.yaml.jinja"], "mas-config-file-file-managed", tplroot) %}
      - {{ source | json }}
{%- endfor %}
    - template: jinja
    - user: root
    - group: {{ mas.group | json }}
    - mode: '0640'
    - context:
        mas_config: {{ mas.mas_config | json }}
    - require:
      - sls: {{ sls_secrets }}

{%- for wrapper, template in [("mas_cli", "mas-cli.sh.jinja"), ("register_user", "register-user.sh.jinja")] %}

{{ ("mas-config-file-file-managed-" ~ wrapper) | json }}:
  file.managed:
    - name: {{ mas.paths[wrapper] | json }}
    - source:
{%- for source in salt["mas.files_switch"]([template], "mas-config-file-file-managed-" ~ wrapper, tplroot) %}
      - {{ source | json }}
{%- endfor %}
    - template: jinja
    - user: root
    - group: root
    - mode: '0755'
    - context:
        paths: {{ mas.paths | json }}
        runtime: {{ mas.runtime | json }}
        image: {{ mas.image | json }}
        binary: {{ mas.binary | json }}
        user: {{ mas.user | json }}
        group: {{ mas.group | json }}
        docker: {{ mas.service.docker | json }}
        labels_file: {{ (mas.paths.labels_file if labels else "") | json }}
        salt_call: {{ salt_wrapper.salt_call | json }}
        salt_config_dir: {{ salt_wrapper.config_dir | json }}
    - require:
      - sls: {{ sls_secrets }}
{%- endfor %}
{%- if labels %}

mas-config-file-file-managed-labels:
  file.managed:
    - name: {{ mas.paths.labels_file | json }}
    - source:
{%- for source in salt["mas.files_switch"](["docker.labels.jinja"], "mas-config-file-file-managed-labels", tplroot) %}
      - {{ source | json }}
{%- endfor %}
    - template: jinja
    - user: root
    - group: {{ mas.group | json }}
    - mode: '0640'
    - context:
        labels: {{ labels | json }}
    - require:
      - sls: {{ sls_secrets }}
{%- else %}

mas-config-file-file-absent-labels:
  file.absent:
    - name: {{ mas.paths.labels_file | json }}
{%- endif %}
