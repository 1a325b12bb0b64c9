#!yaml
# -*- coding: utf-8 -*-
# vim: ft=sls
# The compatibility layer (login/logout/refresh to MAS) and MAS's public route
# for the reverse proxy in mas:proxy:type (nginx, traefik or none).

---
include:
  - .file
  - .reload
