#!yaml
# -*- coding: utf-8 -*-
# vim: ft=sls

---
include:
  - .unit
  - .running
