"""The formula's own preflight of a migration: what will fail and how big the job is, read from Synapse's config and database and MAS's database before MAS even runs.

One aggregate query per table in one read-only snapshot (a million users in
about a second); every error says what to change, warnings say what MAS will
not use. The same checks run again before a real migration.
"""

import logging
import os

import salt.utils.files

from mas_formula import syn2mas_db, syn2mas_marker, syn2mas_output, synapse_config

log = logging.getLogger(__name__)


def readable_by(path, user):
    """None when ``user`` can read ``path``, else why not."""
    import grp  # pylint: disable=import-outside-toplevel
    import pwd  # pylint: disable=import-outside-toplevel

    try:
        account = pwd.getpwnam(user)
    except KeyError:
        return f"the user {user!r} does not exist"
    if account.pw_uid == 0:
        return None
    info = os.stat(path)
    groups = {account.pw_gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}
    if info.st_uid == account.pw_uid:
        allowed = info.st_mode & 0o400
    elif info.st_gid in groups:
        allowed = info.st_mode & 0o040
    else:
        allowed = info.st_mode & 0o004
    if allowed:
        return None
    return f"mode {oct(info.st_mode & 0o777)[2:]}, owner {info.st_uid}:{info.st_gid}"


#: ``user_external_ids.auth_provider`` rows a previously configured MAS left behind.
OAUTH_DELEGATED = "oauth-delegated"


#: Synapse's auth systems MAS cannot take over by itself: (config key, name).
EXTERNAL_AUTH = (("cas_config", "CAS"), ("saml2_config", "SAML2"), ("jwt_config", "JWT"))


def is_enabled(section):
    return isinstance(section, dict) and bool(section.get("enabled", False))


def synapse_oidc_providers(conf):
    """The ``auth_provider`` ids Synapse stores for its OIDC providers (upstream's rules)."""
    ids = set()
    legacy = conf.get("oidc_config") if isinstance(conf.get("oidc_config"), dict) else {}
    if legacy.get("issuer") is not None and legacy.get("client_id") is not None:
        ids.add(str(legacy.get("idp_id") or "oidc"))
    for provider in conf.get("oidc_providers") or []:
        if isinstance(provider, dict):
            idp_id = provider.get("idp_id")
            ids.add("oidc" if idp_id in (None, "oidc") else f"oidc-{idp_id}")
    return ids


def mas_providers(mas):
    """``{synapse_idp_id: MAS provider id}`` of the providers in MAS's config."""
    providers = ((mas.get("mas_config") or {}).get("upstream_oauth2") or {}).get("providers") or []
    return {str(p["synapse_idp_id"]): str(p.get("id")) for p in providers if p.get("synapse_idp_id")}


def mas_bcrypt_secret(mas, pillar_pepper=None):
    """``(scheme, secret bytes or None, where)`` of MAS's password scheme version 1 (``scheme`` None: none).

    A ``secret_file`` is read raw (MAS compares it untrimmed); the formula's own
    pepper file counts as the value the formula will write there: ``pillar_pepper``
    (``mas:synapse:pepper``, which ``mas`` keeps the file in step with), or
    Synapse's pepper when the file is not written yet.
    """
    passwords = (mas.get("mas_config") or {}).get("passwords") or {}
    if passwords.get("enabled", True) is False:
        return None, None, "passwords.enabled is false in MAS's config"
    scheme = next((s for s in passwords.get("schemes") or [] if isinstance(s, dict) and s.get("version") == 1), None)
    if scheme is None:
        return None, None, "MAS's config has no password scheme version 1"
    if scheme.get("secret") is not None:
        return scheme, str(scheme["secret"]).encode(), "passwords.schemes[version 1].secret (mas:config)"
    path = scheme.get("secret_file")
    if not path:
        return scheme, None, "passwords.schemes[version 1] has no secret"
    ours = path == mas["paths"]["synapse_pepper"]
    if ours and mas["synapse"].get("pepper_source") == "pillar" and pillar_pepper not in (None, ""):
        return scheme, str(pillar_pepper).encode(), "mas:synapse:pepper (written to the pepper file by `mas`)"
    if os.path.isfile(path):
        with salt.utils.files.fopen(path, "rb") as handle:
            return scheme, handle.read(), f"{path} (MAS's bcrypt secret_file)"
    if ours:
        syn = mas["synapse"]
        conf = synapse_config.read(
            syn.get("config_files"), syn["config_dir"], {}, exclude=[syn2mas_marker.dropin(mas)]
        )["config"]
        pepper = (conf.get("password_config") or {}).get("pepper")
        where = "Synapse's pepper from mas:synapse:config_files (written to the pepper file by `mas`)"
        return scheme, None if pepper in (None, "") else str(pepper).encode(), where
    return scheme, None, f"{path} (MAS's bcrypt secret_file) does not exist"


def synapse_counts(conn, server_name):
    """Synapse's numbers, set-based (one aggregate query per table)."""
    columns = syn2mas_db.column_list(conn, "users")
    optional = {
        name: (f"count(*) FILTER (WHERE {name})" if name in columns else "0")
        for name in ("locked", "shadow_banned", "suspended")
    }
    suffix = f":{server_name}"
    (
        total,
        admins,
        guests,
        deactivated,
        appservice,
        with_password,
        bcrypt,
        foreign,
        locked,
        shadow_banned,
        suspended,
    ) = syn2mas_db.fetch(
        conn,
        "SELECT count(*), count(*) FILTER (WHERE admin <> 0), count(*) FILTER (WHERE is_guest <> 0), "  # noqa: S608
        "count(*) FILTER (WHERE deactivated <> 0), count(*) FILTER (WHERE appservice_id IS NOT NULL), "
        "count(*) FILTER (WHERE password_hash IS NOT NULL AND password_hash <> ''), "
        "count(*) FILTER (WHERE password_hash LIKE '$2%%'), "
        "count(*) FILTER (WHERE appservice_id IS NULL AND right(name, %s) <> %s), "
        f"{optional['locked']}, {optional['shadow_banned']}, {optional['suspended']} FROM users",
        (len(suffix), suffix),
    )[0]
    threepids = dict(
        syn2mas_db.fetch(conn, "SELECT medium, count(*) FROM user_threepids GROUP BY medium ORDER BY medium")
    )
    external = dict(
        syn2mas_db.fetch(
            conn, "SELECT auth_provider, count(*) FROM user_external_ids GROUP BY auth_provider ORDER BY 1"
        )
    )
    devices, visible = syn2mas_db.fetch(
        conn,
        "SELECT count(*), count(*) FILTER (WHERE NOT coalesce(hidden, false) AND device_id <> 'guest_device') "
        "FROM devices",
    )[0]
    (access,) = syn2mas_db.fetch(conn, "SELECT count(*) FROM access_tokens")[0]
    (refresh,) = syn2mas_db.fetch(conn, "SELECT count(*) FROM refresh_tokens")[0]
    return {
        "users": {
            "total": total,
            "local": total - appservice,
            "admins": admins,
            "guests": guests,
            "deactivated": deactivated,
            "locked": locked,
            "shadow_banned": shadow_banned,
            "suspended": suspended,
            "appservice": appservice,
            "with_password": with_password,
            "bcrypt_hashes": bcrypt,
            "foreign_ids": foreign,
        },
        "threepids": {
            "email": threepids.get("email", 0),
            "non_email": sum(n for medium, n in threepids.items() if medium != "email"),
            "by_medium": threepids,
        },
        "external_ids": external,
        "devices": devices,
        "devices_migrated": visible,
        "access_tokens": access,
        "refresh_tokens": refresh,
    }


def mas_contents(conn):
    """Which of syn2mas's tables hold rows in MAS's database, and whether a partial migration is there."""
    present = {
        table
        for table, exists in syn2mas_db.fetch(
            conn,
            "SELECT t, to_regclass('public.' || t) IS NOT NULL FROM unnest(%s::text[]) AS t",
            (list(syn2mas_db.MAS_MIGRATED_TABLES) + ["syn2mas_restore_indices", "syn2mas__users"],),
        )
        if exists
    }
    filled = [
        table
        for table in syn2mas_db.MAS_MIGRATED_TABLES
        if table in present and syn2mas_db.fetch(conn, f"SELECT EXISTS (SELECT 1 FROM {table})")[0][0]  # noqa: S608
    ]
    users = syn2mas_db.fetch(conn, "SELECT count(*) FROM users")[0][0] if "users" in filled else 0
    return {
        "schema": "users" in present,
        "filled": filled,
        "users": users,
        "partial": "syn2mas_restore_indices" in present,
    }


def preflight(mas, opts, marker, files, conf, secrets, mas_database, pillar_pepper=None):
    """The native checks (``mas_syn2mas.preflight``): ``{errors, warnings, notes, counts, ...}``; ``mas_database``
    is MAS's connection (with its password), ``pillar_pepper`` the value of ``mas:synapse:pepper``."""
    errors, warnings, notes = [], [], list(mas["syn2mas"].get("deprecations") or [])
    origin = synapse_config.read(files, None, {})["origins"] if files else {}

    def where(key):
        return f"{key} in {origin.get(key, 'the Synapse config')}"

    phase = syn2mas_marker.phase_of(marker)
    if phase in syn2mas_marker.DONE_PHASES:
        errors.append(syn2mas_marker.already(mas, marker))
    if not files:
        errors.append(
            "no Synapse config file found (mas:synapse:config_files, mas:synapse:config_dir): list the pre-MAS "
            "Synapse config in mas:syn2mas:synapse_config_files"
        )
    server_name = conf.get("server_name")
    if files and server_name != mas.get("server_name"):
        errors.append(
            f"Synapse's server_name is {server_name!r} ({where('server_name')}) but mas:server_name is "
            f"{mas.get('server_name')!r}: MAS's matrix.homeserver must equal it; set mas:server_name: {server_name}"
        )
    if conf.get("allow_guest_access"):
        errors.append(
            f"guest access is on ({where('allow_guest_access')}): MAS has no guests (MAS#1445); set "
            "allow_guest_access: false in Synapse's config"
        )
    if conf.get("enable_3pid_changes") is True:
        errors.append(f"{where('enable_3pid_changes')} is true: remove it or set it to false (MAS manages emails)")
    if is_enabled(conf.get("login_via_existing_session")):
        errors.append(
            f"login_via_existing_session.enabled is true ({where('login_via_existing_session')}): set it to false"
        )
    if conf.get("enable_registration"):
        warnings.append(
            f"Synapse has registration enabled ({where('enable_registration')}): turn it off before Synapse comes "
            "back (the formula refuses it once Synapse delegates; users then register in MAS)"
        )
    for key, name in EXTERNAL_AUTH:
        if is_enabled(conf.get(key)):
            warnings.append(
                f"Synapse signs users in with {name} ({where(key)}): MAS cannot take {name} over; its users need "
                "an upstream OAuth 2.0 provider mapped by hand (mas:upstream_oauth2_providers)"
            )
    password_config = conf.get("password_config") if isinstance(conf.get("password_config"), dict) else {}
    if password_config.get("localdb_enabled") is False or conf.get("password_providers"):
        warnings.append(
            "Synapse checks passwords with a password provider (password_config.localdb_enabled: false or "
            "password_providers): those users have no password MAS can check; give them an upstream provider"
        )
    if conf.get("user_consent") is not None:
        warnings.append(
            f"Synapse has user_consent ({where('user_consent')}): disable it after the migration; MAS links terms "
            "of service with mas:config:branding:tos_uri"
        )

    counts, synapse_label = {}, None
    try:
        database = syn2mas_db.synapse_database(conf, opts, files)
        synapse_label = database["label"]
        if database["engine"] == "sqlite":
            raise syn2mas_db.Unreachable(
                "Synapse database configuration is invalid, cannot migrate: syn2mas does not support the sqlite3 "
                f"database driver ({database['label']}). Port Synapse to PostgreSQL first (synapse_port_db), "
                "then migrate"
            )
        with syn2mas_db.connected(database, secrets) as (_, conn):
            counts = synapse_counts(conn, server_name or mas.get("server_name"))
            conn.rollback()
    except syn2mas_db.Unreachable as exc:
        errors.append(str(exc))
    except syn2mas_db.db_errors() as exc:
        errors.append(
            f"Synapse's {synapse_label} cannot be read as a Synapse database: {syn2mas_output.scrub(str(exc).strip(), secrets)}"
        )

    scheme, secret, source = mas_bcrypt_secret(mas, pillar_pepper)
    pepper = password_config.get("pepper")
    bcrypt_users = (counts.get("users") or {}).get("bcrypt_hashes", 0)
    if scheme is None or scheme.get("algorithm") != "bcrypt":
        if bcrypt_users:
            errors.append(
                f"{bcrypt_users} Synapse users have bcrypt password hashes but MAS has no bcrypt password scheme "
                f"version 1 ({source}): keep the formula's passwords.schemes (do not override them in mas:config)"
            )
    elif files and secret != (None if pepper in (None, "") else str(pepper).encode()):
        pepper_where = f"password_config.pepper in {origin.get('password_config', '?')}" if pepper else "none set"
        errors.append(
            f"Synapse's pepper ({pepper_where}) "
            f"differs from the secret of MAS's bcrypt scheme ({source}): migrated passwords would not work. Set "
            "mas:synapse:pepper to Synapse's pepper, or leave it unset to let the formula read it from Synapse's config"
        )

    if counts:
        users = counts["users"]
        if users["foreign_ids"]:
            errors.append(
                f"{users['foreign_ids']} Synapse users have an ID not ending in :{server_name}: syn2mas stops on "
                "them (check server_name)"
            )
        if users["guests"]:
            warnings.append(
                f"{users['guests']} guest users will be migrated, but MAS does not support guests (MAS#1445)"
            )
        if counts["threepids"]["non_email"]:
            media = ", ".join(
                f"{medium}: {n}" for medium, n in counts["threepids"]["by_medium"].items() if medium != "email"
            )
            warnings.append(
                f"{counts['threepids']['non_email']} non-email 3PIDs ({media}) are copied to MAS's "
                "user_unsupported_third_party_ids: MAS cannot use them to sign in or to reset a password"
            )
        known = synapse_oidc_providers(conf)
        mapped = mas_providers(mas)
        for provider, n in sorted(counts["external_ids"].items()):
            if provider == OAUTH_DELEGATED:
                errors.append(
                    f"Synapse's database has {n} user_external_ids rows of provider {OAUTH_DELEGATED} left by a "  # noqa: S608
                    "previously configured MAS: if they are from an earlier migration attempt, run `DELETE FROM "
                    f"user_external_ids WHERE auth_provider = '{OAUTH_DELEGATED}';` on Synapse's database"
                )
                continue
            if provider in mapped and provider in known:
                continue
            if provider in mapped or provider not in known:
                text = (
                    f"{n} Synapse users are linked to provider {provider}, which the Synapse config syn2mas reads "
                    f"does not define ({', '.join(files) or 'no file'})"
                )
                if opts["ignore_missing_auth_providers"]:
                    warnings.append(f"{text}: their links are dropped (mas:syn2mas:ignore_missing_auth_providers)")
                    continue
                if provider in mapped:
                    errors.append(
                        f"{text}: syn2mas refuses that. List the pre-MAS config file that defines it in "
                        "mas:syn2mas:synapse_config_files, or set mas:syn2mas:ignore_missing_auth_providers: true "
                        "to drop these links"
                    )
                    continue
            if not provider.startswith("oidc"):
                errors.append(
                    f"Unknown upstream provider {provider}: {n} Synapse users signed in with it, and it is no "
                    "OpenID Connect provider MAS can map (CAS/SAML?): give those users another way in, or set "
                    "mas:syn2mas:ignore_missing_auth_providers: true to drop their links"
                )
                continue
            errors.append(
                f"Unknown upstream provider {provider}: {n} Synapse users are linked to it and no MAS provider maps "
                f"it. Add `synapse_idp_id: {provider}` to its entry in mas:upstream_oauth2_providers (or the seed's "
                f"`--upstreamProviderMapping {provider}:<MAS provider id>` in mas:syn2mas:extra_arguments)"
            )

    if phase not in syn2mas_marker.DONE_PHASES:
        try:
            with syn2mas_db.connected(mas_database, secrets) as (_, conn):
                contents = mas_contents(conn)
                conn.rollback()
        except syn2mas_db.Unreachable as exc:
            errors.append(f"{exc}: syn2mas writes there (create it: mas:database:manage, or by hand)")
        except syn2mas_db.db_errors() as exc:
            errors.append(f"{mas_database['label']} cannot be read: {syn2mas_output.scrub(str(exc).strip(), secrets)}")
        else:
            if contents["partial"]:
                notes.append("a partial syn2mas migration is in MAS's database: the next run resets it first")
            elif contents["filled"]:
                errors.append(
                    f"{mas_database['label']} is not empty: rows in {', '.join(contents['filled'])} "
                    f"({contents['users']} users). syn2mas needs it empty: drop and recreate it (mas:database), "
                    "then run again"
                )
    return {
        "errors": errors,
        "warnings": warnings,
        "notes": notes,
        "counts": counts,
        "synapse_database": synapse_label,
        "mas_database": mas_database["label"],
        "synapse_configs": files,
    }
