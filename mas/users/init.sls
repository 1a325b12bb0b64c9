#!mas_py
"""Users of mas:users (bots, bridges, admins), registration tokens and bot tokens.

They live in the service that is authoritative now: MAS's admin API once MAS is
up, Synapse (shared-secret registration and admin API) while MAS is disabled
or mas:migration_in_progress is true -- syn2mas then brings the users over.
Registration and bot tokens are MAS's: skipped meanwhile.
"""

ROLE = "mas"  # mas:roles: elsewhere, the renderer gives one test.nop instead


def run(mas, tplroot):
    sls_service = tplroot + ".service"
    require = {"require": [{"sls": sls_service}]} if mas["enabled"] else {}
    states = {"include": [sls_service]} if mas["enabled"] else {}
    for user in mas["users"]:
        function = "absent" if user["absent"] else "present"
        state_id = f"mas-users-mas_user-{function}-{user['username']}"
        if user["absent"]:
            args = {"erase": user["erase"]}
        else:
            keys = ["admin", "emails", "password_pillar_key", "locked", "password_update", "skip_password_check"]
            args = {key: user[key] for key in keys}
        states[state_id] = state(f"mas_user.{function}", name=user["username"], **args, **require)
        token = user["access_token"]
        if token and not user["absent"]:
            states[f"mas-users-mas_user-bot_token-{user['username']}"] = state(
                "mas_user.bot_token",
                name=user["username"],
                path=token["path"],
                owner=token.get("owner"),
                group=token.get("group"),
                scope=token.get("scope"),
                device_id=token.get("device_id"),
                expires_in=token.get("expires_in"),
                renew_before=token["renew_before"],
                synapse_admin=token.get("synapse_admin", False),
                require=[{"mas_user": state_id}],
            )
    for name, token in sorted(mas["registration_tokens"].items()):
        states[f"mas-users-mas_user-registration_token-{name}"] = state(
            "mas_user.registration_token",
            name=name,
            usage_limit=token.get("usage_limit"),
            expires=token.get("expires"),
            revoked=token.get("revoked", False),
            **require,
        )
    # the states above share one session per service; end them (Synapse: log out)
    states["mas-users-mas_user-sessions_closed"] = state("mas_user.sessions_closed", name="mas users", order="last")
    return states
