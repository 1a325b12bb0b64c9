"""``mas-cli syn2mas`` of the MAS test double: check and migrate a Synapse database into MAS.

This reimplements, for tests, the observable behaviour of MAS 1.23's ``syn2mas``
(``docs/reference/cli/syn2mas.md`` and ``crates/syn2mas`` upstream): the same
messages, streams and exit codes, and rows that satisfy the real MAS schema
(they are inserted into it).

Flow of :func:`run` (both subcommands unless noted):

1. Load the Synapse configuration(s) (``--synapse-config``, deep-merged, later
   files win) and connect to Synapse's database (``database.args`` of the
   config, or ``--synapse-database-uri``).
2. Connect to the MAS database and make sure the MAS schema exists.
3. ``migrate`` only: a non-pruning "config sync" of ``upstream_oauth2.providers``.
4. Take the session advisory lock ``syn2mas-maswriter`` (one instance at a time).
5. Run the checks (upstream's ``crates/syn2mas/src/synapse_reader/checks.rs``), check that the MAS database is empty (unless a
   partial migration is being resumed), print the errors and warnings on stderr.
   Errors: exit 10.  ``check``: warnings exit 11, else print the success line.
6. ``migrate``: read Synapse in one ``SERIALIZABLE READ ONLY DEFERRABLE``
   transaction (``LOCK TABLE ... IN EXCLUSIVE MODE NOWAIT``; ``ACCESS SHARE``
   with ``--dry-run``), then write MAS.  The eight target tables are renamed
   ``syn2mas__<table>`` and the marker tables ``syn2mas_restore_constraints`` and
   ``syn2mas_restore_indices`` are created for the duration of the write, as
   upstream does; a run that dies half-way leaves them behind and the next run
   logs ``Partial syn2mas migration has already been done; resetting.``,
   empties the renamed tables and starts over.  ``--dry-run`` finishes the
   migration, then empties the eight tables again (``TRUNCATE ... CASCADE``).

The Synapse lock only conflicts with a transaction that is writing to one of
the locked tables at that moment: against an idle, running Synapse a real
``migrate`` succeeds (as upstream's would); stopping Synapse is still the
documented precondition for a consistent copy.

Deliberate simplifications (not observable through the CLI):

* Upstream drops the constraints and indices of the target tables during the
  bulk load and records them in the ``syn2mas_restore_*`` tables.  The double
  keeps every constraint in place (so each row is checked on insert), which
  leaves those marker tables empty.
* Access and refresh tokens are only read for devices that become compat
  sessions (not hidden, not ``guest_device``), so that every token has its
  session under the kept foreign keys.
* The config sync stores no ``encrypted_client_secret`` (the double has no
  MAS encrypter); every NOT NULL column is filled.

Texts not taken from upstream sources (the rest are): the warning printed for
a provider missing from the Synapse config under
``--ignore-missing-auth-providers`` (the error's text, listed as a warning),
the INFO/WARN log lines of the migration itself, and the ``Error:`` text of
the injected fault.

Fault injection: when the environment variable ``MAS_DOUBLE_FAULT`` contains
``migrate-exit1``, a real (non dry-run) migration stops after the users and
passwords are written, prints an ``Error: ...`` line and exits 1, leaving the
partial-migration marker behind. With ``migrate-drop-user`` a real migration
leaves out one user (the last by name) with their password, emails, links and
sessions, and still succeeds: not upstream behaviour, a silent loss for the
formula's verification to find.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import sys
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg
import yaml
from psycopg import sql
from psycopg.types.json import Jsonb

from mas_double import db, faults, ulid
from mas_double.config import ConfigError, MasConfig, deep_merge
from mas_double.config import check as check_config
from mas_double.tracing import Logger

# ----------------------------------------------------------------- constants

#: Exit codes of ``mas-cli syn2mas`` (``crates/cli/src/commands/syn2mas.rs``).
EXIT_SUCCESS = 0
EXIT_FAILURE = 1
EXIT_CHECK_ERRORS = 10
EXIT_CHECK_WARNINGS = 11

#: Password scheme version that migrated Synapse hashes are stored under.
MIGRATED_PASSWORD_VERSION = 1

#: The MAS tables syn2mas writes; they must be empty before a migration.
MAS_TABLES_AFFECTED_BY_MIGRATION = (
    "users",
    "user_passwords",
    "user_emails",
    "user_unsupported_third_party_ids",
    "upstream_oauth_links",
    "compat_sessions",
    "compat_access_tokens",
    "compat_refresh_tokens",
)

#: Marker tables that exist while a migration is in progress (or half-done).
RESTORE_TABLES = ("syn2mas_restore_constraints", "syn2mas_restore_indices")

#: Prefix of the target tables while a migration is in progress.
TEMPORARY_TABLE_PREFIX = "syn2mas__"

#: Synapse tables locked by the migration's read transaction.
SYNAPSE_TABLES_TO_LOCK = ("users", "user_threepids", "user_external_ids", "devices", "access_tokens", "refresh_tokens")

#: Name of the session advisory lock (hashed like sqlx's ``PgAdvisoryLock::new``).
ADVISORY_LOCK_NAME = "syn2mas-maswriter"

#: The ``MAS_DOUBLE_FAULT`` fault that stops a real migration half-way.
FAULT_MIGRATE_EXIT1 = "migrate-exit1"

#: The ``MAS_DOUBLE_FAULT`` fault that silently leaves one user out of a real migration.
FAULT_MIGRATE_DROP_USER = "migrate-drop-user"

#: The only Synapse database driver syn2mas supports.
SYNAPSE_DATABASE_DRIVER_PSYCOPG2 = "psycopg2"

#: ``user_external_ids.auth_provider`` left behind by a previously configured MAS.
OAUTH_DELEGATED_PROVIDER = "oauth-delegated"

_log = Logger("mas_cli::commands::syn2mas")
_writer_log = Logger("syn2mas::mas_writer")
_migration_log = Logger("syn2mas::migration")
_sync_log = Logger("mas_cli::sync")

_UTC = dt.UTC


# ------------------------------------------------------------------ interface


class Syn2MasArgs(Protocol):
    """The parsed ``syn2mas`` command line."""

    synapse_config: Sequence[str] | None
    synapse_database_uri: str | None
    ignore_missing_auth_providers: bool
    subcommand: str
    dry_run: bool


class Fatal(Exception):
    """An unhandled error: printed as ``Error: ...`` on stderr, exit 1 (like anyhow's report).

    ``causes`` become the ``Caused by:`` section, innermost last.
    """

    def __init__(self, message: str, *causes: object):
        super().__init__(message)
        self.message = message
        self.causes = [str(cause).strip() for cause in causes if str(cause).strip()]

    def render(self) -> str:
        """Format the error the way ``mas-cli`` prints an unhandled ``anyhow::Error``."""
        text = f"Error: {self.message}\n"
        if len(self.causes) == 1:
            text += "\nCaused by:\n" + _indent(self.causes[0]) + "\n"
        elif self.causes:
            text += "\nCaused by:\n" + "".join(_indent(f"{n}: {c}") + "\n" for n, c in enumerate(self.causes))
        return text


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


# ------------------------------------------------------------------- helpers


def rust_debug_str(value: str) -> str:
    """Quote ``value`` like Rust's ``{:?}`` formatting of a string."""
    escapes = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t", "\0": "\\0"}
    return '"' + "".join(escapes.get(ch, ch) for ch in value) + '"'


def ulid_uuid(when: dt.datetime | None = None) -> uuid.UUID:
    """Return a new ULID (as the UUID MAS stores) whose timestamp is ``when`` (default: now)."""
    return uuid.UUID(int=ulid.new_int(None if when is None else int(when.timestamp() * 1000)))


def ulid_datetime(value: uuid.UUID) -> dt.datetime:
    """Return the timestamp (millisecond precision) encoded in a ULID-based UUID."""
    return dt.datetime.fromtimestamp((value.int >> 80) / 1000, tz=_UTC)


def provider_uuid(provider: Mapping) -> uuid.UUID:
    """The database id of an ``upstream_oauth2.providers[]`` entry; :class:`Fatal` when invalid."""
    try:
        return ulid.to_uuid(str(provider["id"]))
    except (KeyError, ValueError) as exc:
        raise Fatal("failed to load MAS config", f"invalid upstream provider id: {exc}") from exc


def advisory_lock_key(name: str = ADVISORY_LOCK_NAME) -> int:
    """Return the bigint key of sqlx's ``PgAdvisoryLock::new(name)``.

    sqlx derives it with HKDF-SHA256 (no salt, ``name`` as input key material,
    info ``SQLx (Rust) Postgres advisory lock``), first 8 bytes, little-endian.
    Using the same key makes the double and a real ``mas-cli`` exclude each other.
    """
    prk = hmac.new(b"\0" * 32, name.encode(), hashlib.sha256).digest()
    okm = hmac.new(prk, b"SQLx (Rust) Postgres advisory lock\x01", hashlib.sha256).digest()
    return int.from_bytes(okm[:8], "little", signed=True)


def _from_seconds(value: int | None) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromtimestamp(value, tz=_UTC)


def _from_millis(value: int | None) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromtimestamp(value / 1000, tz=_UTC)


# ------------------------------------------------------- Synapse configuration


@dataclass
class SynapseConfig:
    """The parts of a (merged) Synapse configuration syn2mas reads."""

    raw: dict

    @classmethod
    def load(cls, paths: Iterable[str]) -> SynapseConfig:
        """Read and deep-merge the YAML files (later files win); :class:`Fatal` on errors."""
        merged: dict = {}
        for path in paths:
            try:
                with open(path, encoding="utf-8") as fh:
                    document = yaml.safe_load(fh)
            except OSError as exc:
                raise Fatal("Failed to load Synapse configuration", f"{exc.strerror}: {path}") from exc
            except yaml.YAMLError as exc:
                raise Fatal("Failed to load Synapse configuration", f"{path}: {exc}") from exc
            if document is None:
                document = {}
            if not isinstance(document, dict):
                raise Fatal("Failed to load Synapse configuration", f"{path}: the top level is not a mapping")
            merged = deep_merge(merged, document)
        for required in ("database", "server_name"):
            if required not in merged:
                raise Fatal("Failed to load Synapse configuration", f"missing field `{required}`")
        return cls(merged)

    def _section(self, name: str) -> dict:
        value = self.raw.get(name)
        return value if isinstance(value, dict) else {}

    def _enabled(self, name: str) -> bool:
        return bool(self._section(name).get("enabled", False))

    @property
    def server_name(self) -> str:
        return str(self.raw["server_name"])

    @property
    def pepper(self) -> str | None:
        pepper = self._section("password_config").get("pepper")
        return None if pepper is None else str(pepper)

    @property
    def password_enabled(self) -> bool:
        return bool(self._section("password_config").get("enabled", True))

    @property
    def password_localdb_enabled(self) -> bool:
        return bool(self._section("password_config").get("localdb_enabled", True))

    @property
    def allow_guest_access(self) -> bool:
        return bool(self.raw.get("allow_guest_access", False))

    @property
    def enable_registration(self) -> bool:
        return bool(self.raw.get("enable_registration", False))

    @property
    def enable_registration_captcha(self) -> bool:
        return bool(self.raw.get("enable_registration_captcha", False))

    @property
    def enable_3pid_changes(self) -> bool | None:
        value = self.raw.get("enable_3pid_changes")
        return None if value is None else bool(value)

    @property
    def has_user_consent(self) -> bool:
        return self.raw.get("user_consent") is not None

    @property
    def login_via_existing_session(self) -> bool:
        return self._enabled("login_via_existing_session")

    def external_auth_systems(self) -> list[str]:
        """Names of the enabled auth systems MAS cannot take over automatically."""
        systems = [
            label
            for key, label in (("cas_config", "CAS"), ("saml2_config", "SAML2"), ("jwt_config", "JWT"))
            if self._enabled(key)
        ]
        if self.password_enabled and not self.password_localdb_enabled:
            systems.append("non-standard password provider plugin")
        return systems

    def oidc_providers(self) -> dict[str, dict]:
        """Map each ``auth_provider`` id Synapse stores to its OIDC provider config.

        ``oidc_config`` (only when it has ``issuer`` and ``client_id``) is ``oidc``;
        an ``oidc_providers`` entry is ``oidc-<idp_id>`` (``oidc`` when the id is
        missing or is ``oidc`` itself).
        """
        providers: dict[str, dict] = {}
        legacy = self._section("oidc_config")
        if legacy.get("issuer") is not None and legacy.get("client_id") is not None:
            providers[str(legacy.get("idp_id") or "oidc")] = legacy
        for provider in self.raw.get("oidc_providers") or []:
            if not isinstance(provider, dict):
                continue
            idp_id = provider.get("idp_id")
            key = "oidc" if idp_id in (None, "oidc") else f"oidc-{idp_id}"
            providers[key] = provider
        return providers

    def connect_kwargs(self) -> dict:
        """Return psycopg connection keywords from ``database``; :class:`Fatal` when unsupported.

        Missing values are left to libpq (``PG*`` environment variables, defaults).
        """
        database = self._section("database")
        name = database.get("name")
        problem = None
        if name != SYNAPSE_DATABASE_DRIVER_PSYCOPG2:
            problem = f"syn2mas does not support the {name} database driver"
        args = database.get("args") if isinstance(database.get("args"), dict) else {}
        if problem is None and args.get("database") is not None and args.get("dbname") is not None:
            problem = (
                "Only one of `database` and `dbname` may be specified in the Synapse database configuration, not both."
            )
        if problem:
            raise Fatal("Synapse database configuration is invalid, cannot migrate.", problem)
        kwargs = {"application_name": "syn2mas-synapse"}
        for key in ("host", "port", "user", "password"):
            if args.get(key) is not None:
                kwargs[key] = str(args[key])
        dbname = args.get("dbname", args.get("database"))
        if dbname is not None:
            kwargs["dbname"] = str(dbname)
        return kwargs


def connect_synapse(synapse: SynapseConfig, uri: str | None) -> psycopg.Connection:
    """Connect (autocommit) to Synapse's database, from ``uri`` when given, else from the config."""
    kwargs = {"application_name": "syn2mas-synapse"} if uri else synapse.connect_kwargs()
    try:
        return psycopg.connect(uri or "", autocommit=True, **kwargs)
    except psycopg.Error as exc:
        raise Fatal("could not connect to Synapse Postgres database", exc) from exc


# ------------------------------------------------------------------- checks


@dataclass
class CheckResults:
    """Check findings, in the order upstream reports them."""

    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def print(self) -> None:
        """Print the findings on stderr under the upstream headings."""
        if self.errors:
            print("\n\n===== Errors =====", file=sys.stderr)
            print("These issues prevent migrating from Synapse to MAS right now:\n", file=sys.stderr)
            for error in self.errors:
                print(f"• {error}\n", file=sys.stderr)
        if self.warnings:
            print("\n\n===== Warnings =====", file=sys.stderr)
            print(
                "These potential issues should be considered before migrating from Synapse to MAS right now:\n",
                file=sys.stderr,
            )
            for warning in self.warnings:
                print(f"• {warning}\n", file=sys.stderr)
        sys.stderr.flush()


def check_synapse_config(synapse: SynapseConfig, results: CheckResults) -> None:
    """Checks on the Synapse configuration alone."""
    if synapse.enable_registration:
        results.warnings.append(
            "Synapse config has registration enabled. This must be disabled after migration before bringing "
            "Synapse back online."
        )
    if synapse.has_user_consent:
        results.warnings.append("Synapse config has `user_consent` enabled. This should be disabled after migration.")
    for system in synapse.external_auth_systems():
        results.warnings.append(
            f"Synapse config contains {system} auth configuration which will need to be manually mapped as an "
            "upstream OAuth 2.0 provider during migration."
        )
    if synapse.enable_3pid_changes is True:
        results.errors.append(
            "Synapse config has `enable_3pid_changes` explicitly enabled, which must be disabled or removed."
        )
    if synapse.login_via_existing_session:
        results.errors.append(
            "Synapse config has `login_via_existing_session.enabled` set to true, which must be disabled."
        )


def check_against_mas_config(synapse: SynapseConfig, config: MasConfig, results: CheckResults) -> None:
    """Checks of the Synapse configuration against the MAS configuration."""
    schemes = {scheme.version: scheme for scheme in config.password_schemes()}
    if MIGRATED_PASSWORD_VERSION in schemes:
        scheme = schemes[MIGRATED_PASSWORD_VERSION]
        if scheme.algorithm != "bcrypt":
            results.errors.append(
                "Password scheme version '1' in the MAS config must use the Bcrypt algorithm, so that Synapse "
                "passwords can be imported and will be compatible."
            )
        # Byte-exact: a secret_file is read verbatim, so a trailing newline makes it differ.
        if scheme.secret != (None if synapse.pepper is None else synapse.pepper.encode()):
            results.errors.append(
                "Password scheme version '1' in the MAS config must have the same secret as the `pepper` value "
                "from Synapse, so that Synapse passwords can be imported and will be compatible."
            )
    else:
        results.errors.append("MAS config is missing a password hashing scheme with version '1'")

    if synapse.allow_guest_access:
        results.errors.append(
            "Guest support is enabled in the Synapse configuration. Guests aren't supported by MAS, but if you "
            "don't have any then you could disable the option. See "
            "https://github.com/element-hq/matrix-authentication-service/issues/1445"
        )

    homeserver = config.homeserver
    if synapse.server_name != homeserver:
        results.errors.append(
            f"MAS configuration has the wrong `matrix.homeserver` set ({rust_debug_str(homeserver)}), it should "
            f"match Synapse's `server_name` ({rust_debug_str(synapse.server_name)})"
        )

    if synapse.enable_registration_captcha and not config.section("captcha").get("service"):
        results.warnings.append(
            "Synapse config has a registration CAPTCHA enabled, but no CAPTCHA has been configured in MAS. You may "
            "wish to manually configure this."
        )
    if synapse.has_user_consent and not config.section("branding").get("tos_uri"):
        results.warnings.append(
            "Synapse config has `user_consent` enabled but MAS has not been configured with terms of service. You "
            "may wish to set up a `tos_uri` in your MAS branding configuration to replace the user consent."
        )


def check_synapse_database(
    syn: psycopg.Connection,
    synapse: SynapseConfig,
    config: MasConfig,
    ignore_missing_auth_providers: bool,
    results: CheckResults,
) -> None:
    """Checks of the Synapse database contents."""
    (num_guests,) = syn.execute("SELECT COUNT(1) FROM users WHERE is_guest <> 0").fetchone()
    if num_guests > 0:
        results.warnings.append(
            f"Synapse database contains {num_guests} guests which will be migrated are not supported by MAS. See "
            "https://github.com/element-hq/matrix-authentication-service/issues/1445"
        )
    (num_3pids,) = syn.execute("SELECT COUNT(1) FROM user_threepids WHERE medium <> 'email'").fetchone()
    if num_3pids > 0:
        results.warnings.append(
            f"Synapse database contains {num_3pids} non-email 3PIDs (probably phone numbers), which will be "
            "migrated but are not supported by MAS."
        )

    rows = syn.execute(
        "SELECT auth_provider, COUNT(*) FROM user_external_ids GROUP BY auth_provider ORDER BY auth_provider"
    ).fetchall()
    if not rows:
        return
    synapse_providers = synapse.oidc_providers()
    mapped = {provider.get("synapse_idp_id") for provider in config.upstream_providers}
    for auth_provider, num_users in rows:
        if auth_provider == OAUTH_DELEGATED_PROVIDER:
            results.errors.append(
                f"Synapse database has {num_users} mapping entries from a previously-configured MAS instance. If "
                "this is from a previous migration attempt, run the following SQL query against the Synapse "
                "database: `DELETE FROM user_external_ids WHERE auth_provider = 'oauth-delegated';` and then run "
                "the migration again."
            )
            continue
        if auth_provider not in synapse_providers:
            target = results.warnings if ignore_missing_auth_providers else results.errors
            target.append(
                f"Synapse database contains {num_users} users associated to the OpenID Connect or OAuth2 provider "
                f"'{auth_provider}' but the Synapse configuration does not contain this provider."
            )
            continue
        if auth_provider not in mapped:
            issuer = synapse_providers[auth_provider].get("issuer") or "<unspecified>"
            results.errors.append(
                f"Synapse config contains an OpenID Connect or OAuth2 provider '{auth_provider}' (issuer: "
                f"{rust_debug_str(str(issuer))}) used by {num_users} users which must also be configured in the "
                "MAS configuration as an upstream provider."
            )


# --------------------------------------------------------------- MAS database


def ensure_mas_schema(config: MasConfig, conn: psycopg.Connection) -> None:
    """Load the MAS schema when the database has none (both subcommands run the migrations first).

    While a migration is half-done ``users`` is renamed ``syn2mas__users``; the
    schema is there all the same, so it is not loaded again.
    """
    if conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"public.{RESTORE_TABLES[0]}",)).fetchone()[0]:
        return
    db.ensure_schema(config)


def sync_upstream_providers(conn: psycopg.Connection, config: MasConfig) -> None:
    """Non-pruning ``config sync`` of ``upstream_oauth2.providers`` into ``upstream_oauth_providers``.

    Adds missing providers and updates existing ones; never deletes.  Every
    NOT NULL column of the real schema is filled.
    """
    _sync_log.info("Syncing providers and clients defined in config to database", prune="false", dry_run="false")
    now = dt.datetime.now(_UTC)
    with conn.transaction():
        for position, provider in enumerate(config.upstream_providers):
            provider_id = provider_uuid(provider)
            exists = conn.execute(
                "SELECT 1 FROM upstream_oauth_providers WHERE upstream_oauth_provider_id = %s", (provider_id,)
            ).fetchone()
            verb = "Updating" if exists else "Adding"
            _sync_log.info(f"{verb} provider", **{"provider.id": provider["id"]})
            values = {
                "upstream_oauth_provider_id": provider_id,
                "issuer": provider.get("issuer"),
                "human_name": provider.get("human_name"),
                "brand_name": provider.get("brand_name"),
                "scope": str(provider.get("scope", "openid")),
                "client_id": str(provider.get("client_id", "")),
                "token_endpoint_auth_method": str(provider.get("token_endpoint_auth_method", "none")),
                "token_endpoint_signing_alg": provider.get("token_endpoint_auth_signing_alg"),
                "id_token_signed_response_alg": str(provider.get("id_token_signed_response_alg", "RS256")),
                "userinfo_signed_response_alg": provider.get("userinfo_signed_response_alg"),
                "fetch_userinfo": bool(provider.get("fetch_userinfo", False)),
                "created_at": now,
                "disabled_at": None if provider.get("enabled", True) else now,
                "claims_imports": Jsonb(provider.get("claims_imports") or {}),
                "jwks_uri_override": provider.get("jwks_uri"),
                "authorization_endpoint_override": provider.get("authorization_endpoint"),
                "token_endpoint_override": provider.get("token_endpoint"),
                "userinfo_endpoint_override": provider.get("userinfo_endpoint"),
                "discovery_mode": str(provider.get("discovery_mode", "oidc")),
                "pkce_mode": str(provider.get("pkce_method", "auto")),
                "response_mode": provider.get("response_mode"),
                "additional_parameters": Jsonb(
                    sorted((provider.get("additional_authorization_parameters") or {}).items())
                ),
                "forward_login_hint": bool(provider.get("forward_login_hint", False)),
                "ui_order": position,
                "on_backchannel_logout": str(provider.get("on_backchannel_logout", "do_nothing")),
                "registration_token_required": bool(provider.get("registration_token_required", False)),
            }
            columns = list(values)
            updates = [column for column in columns if column not in ("upstream_oauth_provider_id", "created_at")]
            statement = sql.SQL(
                "INSERT INTO upstream_oauth_providers ({cols}) VALUES ({vals}) "
                "ON CONFLICT (upstream_oauth_provider_id) DO UPDATE SET {sets}"
            ).format(
                cols=sql.SQL(", ").join(map(sql.Identifier, columns)),
                vals=sql.SQL(", ").join(sql.Placeholder(column) for column in columns),
                sets=sql.SQL(", ").join(
                    sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(column)) for column in updates
                ),
            )
            conn.execute(statement, values)


def sync_static_clients(conn: psycopg.Connection, config: MasConfig) -> None:
    """Non-pruning ``config sync`` of ``clients`` into ``oauth2_clients`` (``upsert_static``).

    As upstream (``crates/storage-pg/src/oauth2/client.rs``): every grant type
    allowed, ``is_static``; the double stores no ``encrypted_client_secret``.
    """
    with conn.transaction():
        for client in config.clients:
            client_id = ulid.to_uuid(str(client["client_id"]))
            exists = conn.execute("SELECT 1 FROM oauth2_clients WHERE oauth2_client_id = %s", (client_id,)).fetchone()
            _sync_log.info("Updating client" if exists else "Adding client", **{"client.id": client["client_id"]})
            jwks = client.get("jwks")
            conn.execute(
                "INSERT INTO oauth2_clients (oauth2_client_id, redirect_uris, grant_type_authorization_code,"
                " grant_type_refresh_token, grant_type_client_credentials, grant_type_device_code,"
                " token_endpoint_auth_method, jwks, client_name, client_uri, jwks_uri, is_static)"
                " VALUES (%s, %s, TRUE, TRUE, TRUE, TRUE, %s, %s, %s, %s, %s, TRUE)"
                " ON CONFLICT (oauth2_client_id) DO UPDATE SET redirect_uris = EXCLUDED.redirect_uris,"
                " token_endpoint_auth_method = EXCLUDED.token_endpoint_auth_method, jwks = EXCLUDED.jwks,"
                " client_name = EXCLUDED.client_name, client_uri = EXCLUDED.client_uri,"
                " jwks_uri = EXCLUDED.jwks_uri, is_static = TRUE",
                (
                    client_id,
                    [str(uri) for uri in client.get("redirect_uris") or []],
                    str(client.get("client_auth_method")),
                    Jsonb(jwks) if jwks is not None else None,
                    client.get("client_name"),
                    client.get("client_uri"),
                    client.get("jwks_uri"),
                ),
            )


def try_advisory_lock(conn: psycopg.Connection) -> bool:
    """Try to take the session-level ``syn2mas-maswriter`` advisory lock."""
    return bool(conn.execute("SELECT pg_try_advisory_lock(%s)", (advisory_lock_key(),)).fetchone()[0])


def release_advisory_lock(conn: psycopg.Connection) -> None:
    """Release the ``syn2mas-maswriter`` advisory lock held by this session."""
    conn.execute("SELECT pg_advisory_unlock(%s)", (advisory_lock_key(),))


def syn2mas_in_progress(conn: psycopg.Connection) -> bool:
    """True when the partial-migration marker tables exist; :class:`Fatal` when only one does."""
    found = conn.execute(
        "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema AND tablename = ANY(%s)",
        (list(RESTORE_TABLES),),
    ).fetchone()[0]
    if found == 0:
        return False
    if found == len(RESTORE_TABLES):
        return True
    raise Fatal("inconsistent database: some, but not all, syn2mas resumption tables were found")


def mas_pre_migration_checks(conn: psycopg.Connection) -> None:
    """Require the eight target tables to be empty (skipped while resuming a partial migration)."""
    if syn2mas_in_progress(conn):
        return
    for table in MAS_TABLES_AFFECTED_BY_MIGRATION:
        try:
            row = conn.execute(sql.SQL("SELECT 1 AS dummy FROM {} LIMIT 1").format(sql.Identifier(table))).fetchone()
        except psycopg.Error as exc:
            raise Fatal(f"query against {table} failed — is this actually a MAS database?", exc) from exc
        if row is not None:
            raise Fatal(
                f"The MAS database is not empty: rows found in at least `{table}`. "
                "Please drop and recreate the database, then try again."
            )


class MasWriter:
    """Writes migrated rows into the (temporarily renamed) MAS tables."""

    def __init__(self, conn: psycopg.Connection):
        self.conn = conn

    @staticmethod
    def _temporary(table: str) -> sql.Identifier:
        return sql.Identifier(TEMPORARY_TABLE_PREFIX + table)

    def start(self) -> None:
        """Create the marker tables and rename the targets, or reset a partial migration."""
        with self.conn.transaction():
            if syn2mas_in_progress(self.conn):
                _writer_log.warn("Partial syn2mas migration has already been done; resetting.")
                self.conn.execute(
                    sql.SQL("TRUNCATE {} CASCADE").format(
                        sql.SQL(", ").join(self._temporary(t) for t in MAS_TABLES_AFFECTED_BY_MIGRATION)
                    )
                )
                return
            _writer_log.info("Starting new syn2mas migration")
            for table in RESTORE_TABLES:
                self.conn.execute(
                    sql.SQL(
                        "CREATE TABLE {} (order_key SERIAL NOT NULL PRIMARY KEY, table_name TEXT NOT NULL, "
                        "name TEXT NOT NULL, definition TEXT NOT NULL)"
                    ).format(sql.Identifier(table))
                )
            for table in MAS_TABLES_AFFECTED_BY_MIGRATION:
                self.conn.execute(
                    sql.SQL("ALTER TABLE {} RENAME TO {}").format(sql.Identifier(table), self._temporary(table))
                )

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Insert ``rows`` into the renamed ``table`` (inside the caller's transaction)."""
        if not rows:
            return
        statement = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
            self._temporary(table),
            sql.SQL(", ").join(map(sql.Identifier, columns)),
            sql.SQL(", ").join(sql.Placeholder() * len(columns)),
        )
        with self.conn.cursor() as cur:
            cur.executemany(statement, rows)

    def finish(self) -> None:
        """Rename the tables back and drop the marker tables."""
        with self.conn.transaction():
            for table in MAS_TABLES_AFFECTED_BY_MIGRATION:
                self.conn.execute(
                    sql.SQL("ALTER TABLE {} RENAME TO {}").format(self._temporary(table), sql.Identifier(table))
                )
            for table in RESTORE_TABLES:
                self.conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(table)))

    def truncate_migrated(self) -> None:
        """Empty the eight target tables again (the end of a dry run)."""
        self.conn.execute(
            sql.SQL("TRUNCATE {} CASCADE").format(
                sql.SQL(", ").join(sql.Identifier(t) for t in MAS_TABLES_AFFECTED_BY_MIGRATION)
            )
        )


# ------------------------------------------------------------ Synapse reader


@dataclass
class SynapseData:
    """Everything the migration reads from Synapse (one consistent snapshot)."""

    users: list[tuple]
    threepids: list[tuple]
    external_ids: list[tuple]
    devices: list[tuple]
    access_tokens: list[tuple]
    refresh_pairs: list[tuple]


#: Devices that become compat sessions: not hidden (cross-signing holders) and not the guest device.
_VISIBLE_DEVICE = "NOT hidden AND device_id != 'guest_device'"
_VISIBLE_DEVICES = f"SELECT user_id, device_id FROM devices WHERE {_VISIBLE_DEVICE}"

_SYNAPSE_QUERIES = {
    "users": "SELECT name, password_hash, admin, deactivated, locked, creation_ts, is_guest, appservice_id FROM users",
    "threepids": "SELECT user_id, medium, address, added_at FROM user_threepids",
    "external_ids": "SELECT user_id, auth_provider, external_id FROM user_external_ids",
    "devices": (
        f"SELECT user_id, device_id, display_name, last_seen, ip, user_agent FROM devices WHERE {_VISIBLE_DEVICE}"
    ),
    # Tokens without refresh token and not puppeting: those of an existing device, plus deviceless ones.
    "access_tokens": (
        "SELECT at0.user_id, at0.device_id, at0.token, at0.valid_until_ms, at0.last_validated "
        f"FROM access_tokens at0 INNER JOIN ({_VISIBLE_DEVICES}) d USING (user_id, device_id) "
        "WHERE at0.puppets_user_id IS NULL AND at0.refresh_token_id IS NULL "
        "UNION "
        "SELECT at0.user_id, at0.device_id, at0.token, at0.valid_until_ms, at0.last_validated "
        "FROM access_tokens at0 "
        "WHERE at0.puppets_user_id IS NULL AND at0.refresh_token_id IS NULL AND at0.device_id IS NULL"
    ),
    # (access, refresh) pairs, minus the ones made obsolete by a used successor.
    "refresh_pairs": (
        "SELECT rt0.user_id, rt0.device_id, at0.token, rt0.token, at0.valid_until_ms, at0.last_validated "
        f"FROM refresh_tokens rt0 INNER JOIN ({_VISIBLE_DEVICES}) d USING (user_id, device_id) "
        "INNER JOIN access_tokens at0 "
        "  ON at0.refresh_token_id = rt0.id AND at0.user_id = rt0.user_id AND at0.device_id = rt0.device_id "
        "LEFT JOIN access_tokens at1 ON at1.refresh_token_id = rt0.next_token_id "
        "WHERE NOT at1.used OR at1.used IS NULL"
    ),
}


def read_synapse(syn: psycopg.Connection, dry_run: bool) -> SynapseData:
    """Read every migrated row in one ``SERIALIZABLE READ ONLY DEFERRABLE`` transaction.

    The Synapse tables are locked ``EXCLUSIVE ... NOWAIT`` (``ACCESS SHARE`` for a
    dry run), so a real migration fails at once while another session holds a
    conflicting lock (a Synapse transaction writing to one of them).
    """
    lock_mode = "ACCESS SHARE" if dry_run else "EXCLUSIVE"
    try:
        syn.execute("BEGIN")
        syn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE")
    except psycopg.Error as exc:
        raise Fatal("database error whilst begin transaction", exc) from exc
    try:
        for table in SYNAPSE_TABLES_TO_LOCK:
            try:
                syn.execute(
                    sql.SQL("LOCK TABLE {} IN {} MODE NOWAIT").format(sql.Identifier(table), sql.SQL(lock_mode))
                )
            except psycopg.Error as exc:
                raise Fatal(
                    f"database error whilst locking Synapse table `{table}`",
                    f"error returned from database: {exc.diag.message_primary or exc}",
                ) from exc
        rows = {}
        for name, query in _SYNAPSE_QUERIES.items():
            try:
                rows[name] = syn.execute(query).fetchall()
            except psycopg.Error as exc:
                raise Fatal(f"database error whilst reading Synapse {name.replace('_', ' ')}", exc) from exc
        syn.execute("COMMIT")
    except BaseException:
        if not syn.closed:
            syn.execute("ROLLBACK")
        raise
    return SynapseData(**rows)


# -------------------------------------------------------------- transformation


@dataclass(frozen=True)
class UserInfo:
    """A migrated user, as later phases need it."""

    mas_user_id: uuid.UUID
    created_at: dt.datetime
    admin: bool
    deactivated: bool
    guest: bool


@dataclass
class MigrationPlan:
    """The MAS rows to insert, per table, in column order of :data:`MAS_COLUMNS`."""

    users: list[tuple] = field(default_factory=list)
    user_passwords: list[tuple] = field(default_factory=list)
    user_emails: list[tuple] = field(default_factory=list)
    user_unsupported_third_party_ids: list[tuple] = field(default_factory=list)
    upstream_oauth_links: list[tuple] = field(default_factory=list)
    compat_sessions: list[tuple] = field(default_factory=list)
    compat_access_tokens: list[tuple] = field(default_factory=list)
    compat_refresh_tokens: list[tuple] = field(default_factory=list)


#: Columns written per MAS table.
MAS_COLUMNS = {
    "users": ("user_id", "username", "created_at", "locked_at", "deactivated_at", "can_request_admin", "is_guest"),
    "user_passwords": ("user_password_id", "user_id", "hashed_password", "created_at", "version"),
    "user_emails": ("user_email_id", "user_id", "email", "created_at"),
    "user_unsupported_third_party_ids": ("user_id", "medium", "address", "created_at"),
    "upstream_oauth_links": (
        "upstream_oauth_link_id",
        "user_id",
        "upstream_oauth_provider_id",
        "subject",
        "created_at",
    ),
    "compat_sessions": (
        "compat_session_id",
        "user_id",
        "device_id",
        "human_name",
        "created_at",
        "is_synapse_admin",
        "last_active_at",
        "last_active_ip",
        "user_agent",
    ),
    "compat_access_tokens": ("compat_access_token_id", "compat_session_id", "access_token", "created_at", "expires_at"),
    "compat_refresh_tokens": (
        "compat_refresh_token_id",
        "compat_session_id",
        "compat_access_token_id",
        "refresh_token",
        "created_at",
    ),
}


def extract_localpart(user_id: str, server_name: str) -> str:
    """Return the localpart of ``@localpart:server_name``; ``ValueError`` with upstream's reason otherwise."""
    if not user_id.startswith("@"):
        raise ValueError("user ID does not start with `@` sigil")
    localpart, sep, server = user_id[1:].partition(":")
    if not sep:
        raise ValueError("user ID does not have a `:` separator")
    if server != server_name:
        raise ValueError(f"wrong server name: expected {rust_debug_str(server_name)}, got {rust_debug_str(server)}")
    return localpart


class Planner:
    """Turns a :class:`SynapseData` snapshot into a :class:`MigrationPlan` (upstream's mapping, ``crates/syn2mas``)."""

    def __init__(self, server_name: str, provider_ids: Mapping[str, uuid.UUID], ignore_missing_auth_providers: bool):
        self.server_name = server_name
        self.provider_ids = dict(provider_ids)
        self.ignore_missing_auth_providers = ignore_missing_auth_providers
        self.now = dt.datetime.now(_UTC)
        self.users: dict[str, UserInfo] = {}
        self.appservice_localparts: set[str] = set()
        self.sessions: dict[tuple[uuid.UUID, str], uuid.UUID] = {}
        self.plan = MigrationPlan()

    def _missing_user(self, table: str, user_id: str) -> Fatal:
        return Fatal(f"user {user_id} was not found for migration but a row in {table} was found for them")

    def _lookup(self, table: str, user_id: str) -> UserInfo | None:
        """Return the migrated user of a dependent row; None when the row is to be skipped."""
        try:
            localpart = extract_localpart(user_id, self.server_name)
        except ValueError as exc:
            if user_id in self.appservice_localparts:
                return None
            raise Fatal(f"failed to extract localpart of {rust_debug_str(user_id)}", exc) from exc
        info = self.users.get(localpart)
        if info is None and localpart not in self.appservice_localparts:
            raise self._missing_user(table, user_id)
        return info

    def add_users(self, rows: Iterable[tuple]) -> None:
        """``users`` → MAS users (+ ``user_passwords``); application-service users are skipped."""
        for name, password_hash, admin, deactivated, locked, creation_ts, is_guest, appservice_id in rows:
            if appservice_id is not None:
                try:
                    self.appservice_localparts.add(extract_localpart(name, self.server_name))
                except ValueError:
                    _migration_log.warn(f"Skipping appservice user with an unexpected MXID: {name}")
                    self.appservice_localparts.add(name)
                continue
            try:
                localpart = extract_localpart(name, self.server_name)
            except ValueError as exc:
                raise Fatal(f"failed to extract localpart of {rust_debug_str(name)}", exc) from exc
            created_at = _from_seconds(creation_ts) or self.now
            info = UserInfo(ulid_uuid(created_at), created_at, bool(admin), bool(deactivated), bool(is_guest))
            self.users[localpart] = info
            self.plan.users.append(
                (
                    info.mas_user_id,
                    localpart,
                    created_at,
                    created_at if locked else None,
                    created_at if info.deactivated else None,
                    info.admin,
                    info.guest,
                )
            )
            if password_hash is not None:
                self.plan.user_passwords.append(
                    (ulid_uuid(created_at), info.mas_user_id, password_hash, created_at, MIGRATED_PASSWORD_VERSION)
                )

    def add_threepids(self, rows: Iterable[tuple]) -> None:
        """``user_threepids`` → ``user_emails`` (medium email) or ``user_unsupported_third_party_ids``."""
        for user_id, medium, address, added_at in rows:
            try:
                localpart = extract_localpart(user_id, self.server_name)
            except ValueError:
                _migration_log.warn(f"Unexpected MXID for threepid: {user_id}")
                continue
            info = self.users.get(localpart)
            if info is None:
                if localpart in self.appservice_localparts:
                    continue
                if localpart.lower() in self.users:
                    _migration_log.warn(
                        "Threepid found in the database matching an MXID with the wrong casing", mxid=user_id
                    )
                    continue
                raise self._missing_user("user_threepids", user_id)
            created_at = _from_millis(added_at) or self.now
            if medium == "email":
                self.plan.user_emails.append((ulid_uuid(created_at), info.mas_user_id, address, created_at))
            else:
                self.plan.user_unsupported_third_party_ids.append((info.mas_user_id, medium, address, created_at))

    def add_external_ids(self, rows: Iterable[tuple]) -> None:
        """``user_external_ids`` → ``upstream_oauth_links``, matched on the providers' ``synapse_idp_id``."""
        for user_id, auth_provider, external_id in rows:
            info = self._lookup("user_external_ids", user_id)
            if info is None:
                continue
            provider_id = self.provider_ids.get(auth_provider)
            if provider_id is None:
                if self.ignore_missing_auth_providers:
                    _migration_log.warn(
                        "Skipping an upstream link to an unmapped auth provider",
                        mxid=user_id,
                        auth_provider=auth_provider,
                    )
                    continue
                raise Fatal(
                    f"missing a mapping for the auth provider with ID {rust_debug_str(auth_provider)} "
                    f"(used by {user_id} and maybe other users)"
                )
            created_at = ulid_datetime(info.mas_user_id)
            self.plan.upstream_oauth_links.append(
                (ulid_uuid(created_at), info.mas_user_id, provider_id, external_id, created_at)
            )

    def _session_for(self, info: UserInfo, device_id: str, created_at: dt.datetime) -> uuid.UUID:
        return self.sessions.setdefault((info.mas_user_id, device_id), ulid_uuid(created_at))

    def add_access_tokens(self, rows: Iterable[tuple]) -> None:
        """Unrefreshable ``access_tokens`` → ``compat_access_tokens`` (deviceless ones get their own session)."""
        for user_id, device_id, token, valid_until_ms, last_validated in rows:
            info = self._lookup("access_tokens", user_id)
            if info is None or info.deactivated or info.guest:
                continue
            created_at = _from_millis(last_validated) or self.now
            if device_id is not None:
                session_id = self._session_for(info, device_id, created_at)
            else:
                session_id = ulid_uuid(created_at)
                self.plan.compat_sessions.append(
                    (session_id, info.mas_user_id, None, None, created_at, False, None, None, None)
                )
            self.plan.compat_access_tokens.append(
                (ulid_uuid(created_at), session_id, token, created_at, _from_millis(valid_until_ms))
            )

    def add_refresh_pairs(self, rows: Iterable[tuple]) -> None:
        """(access, refresh) token pairs → ``compat_access_tokens`` + ``compat_refresh_tokens``."""
        for user_id, device_id, access_token, refresh_token, valid_until_ms, last_validated in rows:
            info = self._lookup("refresh_tokens", user_id)
            if info is None or info.deactivated or info.guest:
                continue
            created_at = _from_millis(last_validated) or self.now
            session_id = self._session_for(info, device_id, created_at)
            access_token_id = ulid_uuid(created_at)
            self.plan.compat_access_tokens.append(
                (access_token_id, session_id, access_token, created_at, _from_millis(valid_until_ms))
            )
            self.plan.compat_refresh_tokens.append(
                (ulid_uuid(created_at), session_id, access_token_id, refresh_token, created_at)
            )

    def add_devices(self, rows: Iterable[tuple]) -> None:
        """Visible ``devices`` → ``compat_sessions`` (``is_synapse_admin`` = the user's admin flag)."""
        for user_id, device_id, display_name, last_seen, ip, user_agent in rows:
            info = self._lookup("devices", user_id)
            if info is None or info.deactivated or info.guest:
                continue
            session_id = self._session_for(info, device_id, self.now)
            last_active_ip = None
            if ip is not None and ip != "-":
                try:
                    last_active_ip = str(ipaddress.ip_address(ip))
                except ValueError:
                    _migration_log.warn("Failed to parse device IP, ignoring", mxid=user_id, device_id=device_id, ip=ip)
            self.plan.compat_sessions.append(
                (
                    session_id,
                    info.mas_user_id,
                    device_id,
                    display_name,
                    ulid_datetime(session_id),
                    info.admin,
                    _from_millis(last_seen),
                    last_active_ip,
                    user_agent,
                )
            )

    def build(self, data: SynapseData) -> MigrationPlan:
        """Run every phase in upstream's order and return the plan."""
        self.add_users(data.users)
        self.add_threepids(data.threepids)
        self.add_external_ids(data.external_ids)
        self.add_access_tokens(data.access_tokens)
        self.add_refresh_pairs(data.refresh_pairs)
        self.add_devices(data.devices)
        return self.plan


# ----------------------------------------------------------------- the command


def provider_id_mapping(config: MasConfig) -> dict[str, uuid.UUID]:
    """Map each MAS provider's ``synapse_idp_id`` to its database id."""
    return {
        str(provider["synapse_idp_id"]): provider_uuid(provider)
        for provider in config.upstream_providers
        if provider.get("synapse_idp_id")
    }


def drop_one_user(plan: MigrationPlan) -> None:
    """The ``migrate-drop-user`` fault: remove the last user (by name) and every row of theirs from ``plan``."""
    if not plan.users:
        return
    victim = max(plan.users, key=lambda row: row[1])
    user_id = victim[0]
    sessions = {row[0] for row in plan.compat_sessions if row[1] == user_id}
    plan.users = [row for row in plan.users if row[0] != user_id]
    for table in ("user_passwords", "user_emails", "user_unsupported_third_party_ids", "upstream_oauth_links"):
        position = MAS_COLUMNS[table].index("user_id")
        setattr(plan, table, [row for row in getattr(plan, table) if row[position] != user_id])
    plan.compat_sessions = [row for row in plan.compat_sessions if row[0] not in sessions]
    plan.compat_access_tokens = [row for row in plan.compat_access_tokens if row[1] not in sessions]
    plan.compat_refresh_tokens = [row for row in plan.compat_refresh_tokens if row[1] not in sessions]


def migrate(config: MasConfig, mas: psycopg.Connection, syn: psycopg.Connection, ns: Syn2MasArgs) -> int:
    """Read Synapse and write MAS (the ``migrate`` subcommand, once the checks passed)."""
    dry_run = bool(ns.dry_run)
    planner = Planner(config.homeserver, provider_id_mapping(config), bool(ns.ignore_missing_auth_providers))
    data = read_synapse(syn, dry_run)
    writer = MasWriter(mas)
    writer.start()
    print("\n\n", file=sys.stderr, flush=True)  # padding above the progress bar, as upstream
    plan = planner.build(data)
    if not dry_run and faults.active(FAULT_MIGRATE_DROP_USER):
        drop_one_user(plan)
    try:
        with mas.transaction():
            writer.insert("users", MAS_COLUMNS["users"], plan.users)
            writer.insert("user_passwords", MAS_COLUMNS["user_passwords"], plan.user_passwords)
        _migration_log.info(f"users migrated: {len(plan.users)}")
        if not dry_run and faults.active(FAULT_MIGRATE_EXIT1):
            raise Fatal(
                "error when writing to MAS DB (writing compat sessions)",
                f"injected fault (MAS_DOUBLE_FAULT={FAULT_MIGRATE_EXIT1})",
            )
        with mas.transaction():
            for table in MAS_TABLES_AFFECTED_BY_MIGRATION[2:]:
                writer.insert(table, MAS_COLUMNS[table], getattr(plan, table))
    except psycopg.Error as exc:
        raise Fatal("error when writing to MAS DB", exc) from exc
    writer.finish()
    if dry_run:
        _log.info("Dry run: emptying the MAS tables written by the migration")
        writer.truncate_migrated()
    _migration_log.info("migration complete")
    return EXIT_SUCCESS


def _run(config: MasConfig, ns: Syn2MasArgs) -> int:
    if not ns.synapse_config:
        _log.error("Please specify the path to the Synapse configuration file(s).")
        return EXIT_FAILURE
    synapse = SynapseConfig.load(ns.synapse_config)
    # The MAS sections syn2mas extracts (a broken one is fatal before anything runs).
    check_config(config, schema=False, sections=("database", "matrix", "passwords", "upstream_oauth2"))
    with connect_synapse(synapse, ns.synapse_database_uri) as syn, config.connect(autocommit=True) as mas:
        ensure_mas_schema(config, mas)
        if ns.subcommand == "migrate":
            # a real, non-pruning config sync (even with --dry-run): providers and clients
            sync_upstream_providers(mas, config)
            sync_static_clients(mas, config)
        if not try_advisory_lock(mas):
            _log.error("Failed to acquire syn2mas lock on the database.")
            _log.error("This likely means that another syn2mas instance is already running!")
            return EXIT_FAILURE
        try:
            results = CheckResults()
            check_synapse_config(synapse, results)
            check_against_mas_config(synapse, config, results)
            mas_pre_migration_checks(mas)
            check_synapse_database(syn, synapse, config, bool(ns.ignore_missing_auth_providers), results)
            results.print()
            if results.errors:
                return EXIT_CHECK_ERRORS
            if ns.subcommand == "check":
                if results.warnings:
                    return EXIT_CHECK_WARNINGS
                print("Check completed successfully with no errors or warnings.", flush=True)
                return EXIT_SUCCESS
            return migrate(config, mas, syn, ns)
        finally:
            if not mas.closed and mas.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
                release_advisory_lock(mas)


def run(config: MasConfig, ns: Syn2MasArgs) -> int:
    """Run ``mas-cli syn2mas`` (``ns.subcommand`` ``check`` or ``migrate``) and return its exit code.

    Unhandled errors are printed as ``Error: ...`` on stderr (exit 1), like
    ``mas-cli`` prints an ``anyhow`` error.
    """
    try:
        return _run(config, ns)
    except ConfigError as exc:
        error = Fatal(str(exc))
    except Fatal as exc:
        error = exc
    except psycopg.Error as exc:
        error = Fatal("query failed", exc)
    sys.stdout.flush()
    sys.stderr.write(error.render())
    sys.stderr.flush()
    return EXIT_FAILURE
