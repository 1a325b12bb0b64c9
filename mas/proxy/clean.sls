# -*- coding: utf-8 -*-
# vim: ft=sls

mas-proxy-clean-test-nop:
  test.nop: []
