#!yaml
# -*- coding: utf-8 -*-
# vim: ft=sls
# Synapse side of the integration: the drop-in delegating authentication to
# MAS (removed while mas:migration_in_progress is true) and Synapse's copy of
# the shared secret; Synapse is restarted when they change.

---
include:
  - .file
  - .restart
