# -*- coding: utf-8 -*-
# vim: ft=sls
# Users of mas:users (bots, bridges, admins), registration tokens and bot
# tokens, in the service that is authoritative now: MAS's admin API once MAS
# is up, Synapse (shared-secret registration and admin API) while MAS is
# disabled or mas:migration_in_progress is true -- syn2mas then brings the
# users over. Registration and bot tokens are MAS's: skipped meanwhile.
{%- set tplroot = tpldir.split("/")[0] %}
{%- set sls_service = tplroot ~ ".service" %}
{%- from tplroot ~ "/map.jinja" import mapdata as mas with context %}
{%- if mas.enabled %}

include:
  - {{ sls_service | json }}
{%- endif %}
{%- for user in mas.users %}
{%- set function = "absent" if user.absent else "present" %}
{%- set state_id = "mas-users-mas_user-" ~ function ~ "-" ~ user.username %}

{{ state_id | json }}:
  {{ ("mas_user." ~ function) | json }}:
    - name: {{ user.username | json }}
{%- if user.absent %}
    - erase: {{ user.erase | json }}
{%- else %}
    - admin: {{ user.admin | json }}
    - emails: {{ user.emails | json }}
    - password_pillar_key: {{ user.password_pillar_key | json }}
    - locked: {{ user.locked | json }}
    - password_update: {{ user.password_update | json }}
    - skip_password_check: {{ user.skip_password_check | json }}
{%- endif %}
{%- if mas.enabled %}
    - require:
      - sls: {{ sls_service | json }}
{%- endif %}
{%- if user.access_token and not user.absent %}
{%- set token = user.access_token %}

{{ ("mas-users-mas_user-bot_token-" ~ user.username) | json }}:
  mas_user.bot_token:
    - name: {{ user.username | json }}
    - path: {{ token.path | json }}
    - owner: {{ token.get("owner") | json }}
    - group: {{ token.get("group") | json }}
    - scope: {{ token.get("scope") | json }}
    - device_id: {{ token.get("device_id") | json }}
    - expires_in: {{ token.get("expires_in") | json }}
    - renew_before: {{ token.get("renew_before", 86400) | json }}
    - synapse_admin: {{ token.get("synapse_admin", False) | json }}
    - require:
      - mas_user: {{ state_id | json }}
{%- endif %}
{%- endfor %}
{%- for name, token in mas.registration_tokens | dictsort %}

{{ ("mas-users-mas_user-registration_token-" ~ name) | json }}:
  mas_user.registration_token:
    - name: {{ name | json }}
    - usage_limit: {{ token.get("usage_limit") | json }}
    - expires: {{ token.get("expires") | json }}
    - revoked: {{ token.get("revoked", False) | json }}
{%- if mas.enabled %}
    - require:
      - sls: {{ sls_service | json }}
{%- endif %}
{%- endfor %}

{#- the states above share one session per service; end them (Synapse: log out) #}
mas-users-mas_user-sessions_closed:
  mas_user.sessions_closed:
    - name: mas users
    - order: last
