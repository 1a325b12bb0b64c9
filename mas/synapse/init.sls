# -*- coding: utf-8 -*-
# vim: ft=sls
# Placeholder: filled in by the Synapse wiring / proxy work.

mas-synapse-test-nop:
  test.nop: []
