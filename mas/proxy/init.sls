# -*- coding: utf-8 -*-
# vim: ft=sls
# Placeholder: filled in by the Synapse wiring / proxy work.

mas-proxy-test-nop:
  test.nop: []
