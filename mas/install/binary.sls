# -*- coding: utf-8 -*-
# vim: ft=sls
# The binary runtime: MAS's release tarball (mas:binary:source, checked
# against mas:binary:source_hash) extracted with Salt's archive.extracted into
# a directory of its own per tarball under base_path/dist/, so a new version
# lands beside the old one; the unit and config.yaml then point at it, and
# the service restarts once. Without a source, MAS is installed some other way
# (mas:binary:path and mas:binary:share_dir).
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata as mas with context %}

include:
  - .account
{%- if mas.paths.release_dir %}

mas-install-binary-file-directory:
  file.directory:
    - name: {{ mas.paths.dist_dir | json }}
    - user: root
    - group: root
    - mode: '0755'
    - require:
      - file: mas-install-account-file-directory-base

mas-install-binary-archive-extracted:
  archive.extracted:
    - name: {{ mas.paths.release_dir | json }}
    - source: {{ mas.binary.source | json }}
    - source_hash: {{ mas.binary.source_hash | json }}
    - archive_format: tar
    # upstream's tarball holds ./mas-cli, ./share/ and ./LICENSE at its root
    - enforce_toplevel: false
    - user: root
    - group: root
    - if_missing: {{ mas.paths.mas_binary | json }}
    - require:
      - file: mas-install-binary-file-directory
{%- endif %}
