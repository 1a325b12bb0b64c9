# -*- coding: utf-8 -*-
# vim: ft=sls
# Secrets and keys are only removed with mas:clean:purge (by mas.install.clean,
# which removes the whole base path). Losing the encryption secret or the
# signing keys by accident must be hard.
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata as mas with context %}

mas-secrets-clean-test-nop:
  test.nop:
    - name: {{ ("Secrets under " ~ mas.paths.secrets_dir ~ " and " ~ mas.paths.keys_dir ~ " are kept unless mas:clean:purge is true") | json }}
