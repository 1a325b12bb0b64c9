# -*- coding: utf-8 -*-
# vim: ft=sls

mas-synapse-clean-test-nop:
  test.nop: []
