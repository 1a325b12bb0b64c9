#!yaml
# -*- coding: utf-8 -*-
# vim: ft=sls
# syn2mas: migrate Synapse's users into MAS, once (not included by `mas`).
# Run it on purpose, after `mas` was applied with mas:migration_in_progress: true:
#   salt-call state.apply mas.syn2mas pillar='{"mas": {"syn2mas": {"dry_run": true}}}'
#   salt-call state.apply mas.syn2mas
# See docs/migration.md and mas_syn2mas.status.

---
include:
  - .migrate
