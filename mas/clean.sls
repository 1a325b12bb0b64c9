#!yaml
# -*- coding: utf-8 -*-
# vim: ft=sls
# Meta-state: remove MAS in reverse install order. Secrets, keys and data are
# kept unless mas:clean:purge is true.

---
include:
  - .proxy.clean
  - .synapse.clean
  - .service.clean
  - .config.clean
  - .secrets.clean
  - .install.clean
