"""Configuration loading of the MAS test double, modelled on ``mas-cli`` 1.23.

Loading (``crates/cli/src/commands/mod.rs`` upstream, figment):

* the base is the ``MAS_*`` environment variables, ``_`` splitting the path
  (``MAS_DATABASE_URI`` -> ``database.uri``); the double's own ``MAS_DOUBLE_*``
  variables and ``MAS_CONFIG`` are not configuration.  A ``.env`` file is not read;
* then the files are *admerged* over it in order: every ``-c/--config FILE``,
  otherwise the ``:``-separated files of ``MAS_CONFIG``, otherwise ``config.yaml``.
  Admerge (figment): mappings merge key by key, **lists are concatenated**
  (two files that both list ``clients`` give both lists), scalars from the
  later file win (so a file also wins over an environment variable);
* a relative path is looked up in the working directory and then in its
  parents (figment's ``Yaml::file``); a file found nowhere is ignored, and the
  missing sections are then reported (``missing field `secrets```).

Secrets held in files (``*_file`` keys) are read lazily, when a command needs
them, so that ``config check`` does not read them (as upstream):
``secrets.encryption_file``, ``secrets.keys[].key_file``/``password_file``,
``secrets.keys_dir``, ``matrix.secret_file`` (trimmed), ``database.password_file``,
``email.password_file``, ``clients[].client_secret_file``,
``upstream_oauth2.providers[].client_secret_file`` and
``passwords.schemes[].secret_file`` (read verbatim, *not* trimmed).
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from mas_double import faults, upstream

#: ``http`` defaults of MAS when the section is absent (schema ``default``).
DEFAULT_HTTP = {
    "listeners": [
        {
            "name": "web",
            "resources": [{"name": n} for n in ("discovery", "human", "oauth", "compat", "graphql", "assets")],
            "binds": [{"address": "[::]:8080"}],
        },
        {"name": "internal", "resources": [{"name": "health"}], "binds": [{"host": "localhost", "port": 8081}]},
    ],
    "public_base": "http://[::]:8080/",
}

#: ``matrix`` defaults.
DEFAULT_HOMESERVER = "localhost:8008"
DEFAULT_ENDPOINT = "http://localhost:8008/"

#: Default password schemes when ``passwords.schemes`` is absent.
DEFAULT_SCHEMES = [{"version": 1, "algorithm": "argon2id"}]

#: Key names whose values never appear in error messages.
_SENSITIVE_WORDS = ("secret", "password", "encryption", "key", "token")

#: Environment variables with the ``MAS_`` prefix that are not configuration.
_NON_CONFIG_ENV = ("MAS_CONFIG", "MAS_DOUBLE_")


class ConfigError(Exception):
    """An invalid or unreadable configuration; ``mas-cli`` prints ``Error: <message>``, exit 1."""


@dataclass(frozen=True)
class PasswordScheme:
    """One resolved ``passwords.schemes[]`` entry.

    Attributes:
        version: the scheme version stored in ``user_passwords.version``.
        algorithm: ``bcrypt``, ``argon2id`` or ``pbkdf2``.
        cost: bcrypt cost (default 12).
        secret: the pepper bytes (``secret`` or the raw content of ``secret_file``) or None.
        unicode_normalization: apply NFKC to the password before hashing.
    """

    version: int
    algorithm: str
    cost: int
    secret: bytes | None
    unicode_normalization: bool


def _merge(base: Any, overlay: Any, append_lists: bool) -> Any:
    if isinstance(base, dict) and isinstance(overlay, dict):
        merged = dict(base)
        for key, value in overlay.items():
            merged[key] = _merge(base[key], value, append_lists) if key in base else copy.deepcopy(value)
        return merged
    if append_lists and isinstance(base, list) and isinstance(overlay, list):
        return copy.deepcopy(base) + copy.deepcopy(overlay)
    return copy.deepcopy(overlay)


def deep_merge(base: Any, overlay: Any) -> Any:
    """figment's ``merge``: mappings merge recursively, anything else (lists too) is replaced by ``overlay``."""
    return _merge(base, overlay, append_lists=False)


def admerge(base: Any, overlay: Any) -> Any:
    """figment's ``admerge`` (how mas-cli stacks its files): like :func:`deep_merge` but lists concatenate."""
    return _merge(base, overlay, append_lists=True)


def _locate(path: Path, cwd: Path) -> Path | None:
    """Find ``path`` like figment's ``Yaml::file``: absolute as is, relative in ``cwd`` or a parent."""
    if path.is_absolute():
        return path if path.exists() else None
    for directory in (cwd, *cwd.parents):
        if (directory / path).exists():
            return directory / path
    return None


def config_paths(cli_paths: list[str] | None, environ: dict[str, str]) -> list[Path]:
    """Return the configuration files to load, in merge order (``-c``, else ``MAS_CONFIG``, else ``config.yaml``)."""
    if cli_paths:
        return [Path(p) for p in cli_paths]
    env_value = environ.get("MAS_CONFIG")
    if env_value:
        return [Path(p) for p in env_value.split(":") if p]
    return [Path("config.yaml")]


def _env_overlay(environ: dict[str, str]) -> dict:
    """Build the ``MAS_*`` environment overlay (values parsed as YAML scalars)."""
    overlay: dict = {}
    for name, value in sorted(environ.items()):
        if not name.startswith("MAS_") or name.startswith(_NON_CONFIG_ENV):
            continue
        path = [part.lower() for part in name[len("MAS_") :].split("_") if part]
        if not path:
            continue
        try:
            parsed = yaml.safe_load(value) if value else value
        except yaml.YAMLError:
            parsed = value
        if isinstance(parsed, (dict, list)):
            parsed = value
        node = overlay
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            node[path[-1]] = parsed
    return overlay


def load_config(
    cli_paths: list[str] | None = None, environ: dict[str, str] | None = None, cwd: Path | None = None
) -> MasConfig:
    """Load and merge the configuration like ``mas-cli`` does.

    Args:
        cli_paths: the ``-c/--config`` values, in order (empty or None: use ``MAS_CONFIG``).
        environ: the environment (default ``os.environ``).
        cwd: where relative paths are looked up (then in its parents; default the cwd).

    Raises:
        ConfigError: a file is not valid YAML, or its top level is not a mapping.
    """
    environ = dict(os.environ if environ is None else environ)
    cwd = cwd or Path.cwd()
    paths = config_paths(cli_paths, environ)
    merged: dict = _env_overlay(environ)
    for requested in paths:
        path = _locate(requested, cwd)
        if path is None:
            continue
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"failed to read the configuration file {path}: {exc.strerror}") from exc
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{exc} in {path} YAML file") from exc
        if data is None:
            continue
        if not isinstance(data, dict):
            raise ConfigError(f"invalid type: expected a map at the top level of {path} YAML file")
        merged = admerge(merged, data)
    return MasConfig(merged, paths)


def _read_file(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"failed to read {what} from {path}: {exc.strerror}") from exc


def _load_private_key(name: str, data: bytes, password: bytes | None):
    """Parse a PEM or DER private key; raise ConfigError (without the key material) on failure."""
    from cryptography.hazmat.primitives import serialization  # local import: only the server loads keys

    loaders = (serialization.load_pem_private_key, serialization.load_der_private_key)
    for loader in loaders:
        try:
            return loader(data, password=password)
        except (ValueError, TypeError):
            continue
    raise ConfigError(f"failed to load the private key {name}: not a supported PEM/DER private key")


def _pair_error(section: dict, inline: str, file_key: str, required: bool) -> str | None:
    """Return the MAS error for an ``inline``/``file_key`` pair, or None when fine."""
    has_inline = section.get(inline) is not None
    has_file = section.get(file_key) is not None
    if has_inline and has_file:
        return f"Cannot specify both `{inline}` and `{file_key}`"
    if required and not (has_inline or has_file):
        return f"Missing `{inline}` or `{file_key}`"
    return None


class MasConfig:
    """The merged MAS configuration plus lazy accessors for what the double needs.

    This object is also what :func:`mas_double.syn2mas.run` receives.

    Attributes:
        raw: the merged configuration mapping (as written; file secrets unresolved).
        paths: the configuration files that were looked for, in merge order.

    Accessors resolving secrets read the files on each call and raise
    :class:`ConfigError` when they cannot: :meth:`matrix_secret`,
    :meth:`encryption_key`, :meth:`database_password`, :meth:`password_schemes`,
    :meth:`client_secret`, :meth:`provider_client_secret`, :meth:`email_password`.
    Database access goes through :meth:`connect` (honours ``MAS_DOUBLE_FAULT=refuse``).
    """

    def __init__(self, raw: dict, paths: list[Path]):
        self.raw = raw
        self.paths = paths

    # ------------------------------------------------------------ sections

    def section(self, name: str) -> dict:
        """Return a top-level section (empty mapping when absent or null)."""
        value = self.raw.get(name)
        return value if isinstance(value, dict) else {}

    # ---------------------------------------------------------------- http

    @property
    def http(self) -> dict:
        """The ``http`` section with MAS defaults applied."""
        if "http" not in self.raw or self.raw["http"] is None:
            return copy.deepcopy(DEFAULT_HTTP)
        http = dict(self.raw["http"])
        http.setdefault("listeners", [])
        return http

    @property
    def public_base(self) -> str:
        """``http.public_base``, always ending with ``/``."""
        base = str(self.http.get("public_base") or DEFAULT_HTTP["public_base"])
        return base if base.endswith("/") else base + "/"

    @property
    def issuer(self) -> str:
        """``http.issuer``, defaulting to ``public_base``."""
        issuer = self.http.get("issuer")
        return str(issuer) if issuer else self.public_base

    @property
    def listeners(self) -> list[dict]:
        """``http.listeners``."""
        return list(self.http.get("listeners") or [])

    # -------------------------------------------------------------- matrix

    @property
    def matrix(self) -> dict:
        """The ``matrix`` section."""
        return self.section("matrix")

    @property
    def homeserver(self) -> str:
        """``matrix.homeserver`` (the Synapse ``server_name``)."""
        return str(self.matrix.get("homeserver") or DEFAULT_HOMESERVER)

    @property
    def endpoint(self) -> str:
        """``matrix.endpoint``, always ending with ``/``."""
        endpoint = str(self.matrix.get("endpoint") or DEFAULT_ENDPOINT)
        return endpoint if endpoint.endswith("/") else endpoint + "/"

    @property
    def homeserver_kind(self) -> str:
        """``matrix.kind`` (``synapse``, ``synapse_read_only``, ``synapse_legacy``...)."""
        return str(self.matrix.get("kind") or "synapse")

    def matrix_secret(self) -> str:
        """The shared secret with the homeserver (``secret_file`` content is trimmed)."""
        matrix = self.matrix
        error = _pair_error(matrix, "secret", "secret_file", required=True)
        if error:
            raise ConfigError(error)
        if matrix.get("secret") is not None:
            return str(matrix["secret"])
        return _read_file(matrix["secret_file"], "the matrix secret").decode().strip()

    def mxid(self, localpart: str) -> str:
        """Return ``@localpart:homeserver``."""
        return f"@{localpart}:{self.homeserver}"

    # ------------------------------------------------------------- secrets

    def encryption_key(self) -> bytes:
        """The 32-byte encryption key (``secrets.encryption`` or ``encryption_file``, hex)."""
        secrets_cfg = self.section("secrets")
        error = _pair_error(secrets_cfg, "encryption", "encryption_file", required=True)
        if error:
            raise ConfigError(error)
        if secrets_cfg.get("encryption") is not None:
            text = str(secrets_cfg["encryption"])
        else:
            text = _read_file(secrets_cfg["encryption_file"], "the encryption secret").decode().strip()
        try:
            key = bytes.fromhex(text)
        except ValueError as exc:
            raise ConfigError("Invalid encryption secret: not hex") from exc
        if len(key) != 32:
            raise ConfigError("Invalid encryption secret: expected 32 bytes")
        return key

    def signing_keys(self) -> list:
        """Load the private keys of ``secrets.keys`` and ``secrets.keys_dir`` (as MAS does at startup).

        Keys are PEM or DER (PKCS#1, PKCS#8 (possibly encrypted with
        ``password``/``password_file``) or SEC1); returns ``cryptography`` key objects.

        Raises:
            ConfigError: a file is unreadable or a key cannot be parsed.
        """
        secrets_cfg = self.section("secrets")
        sources: list[tuple[str, bytes, bytes | None]] = []
        for index, entry in enumerate(secrets_cfg.get("keys") or []):
            if entry.get("password") is not None:
                password: bytes | None = str(entry["password"]).encode()
            elif entry.get("password_file") is not None:
                password = _read_file(entry["password_file"], "a key password")
            else:
                password = None
            if entry.get("key") is not None:
                sources.append((f"secrets.keys[{index}]", str(entry["key"]).encode(), password))
            elif entry.get("key_file") is not None:
                sources.append((entry["key_file"], _read_file(entry["key_file"], "a signing key"), password))
        keys_dir = secrets_cfg.get("keys_dir")
        if keys_dir:
            directory = Path(keys_dir)
            try:
                files = sorted(p for p in directory.iterdir() if p.is_file())
            except OSError as exc:
                raise ConfigError(f"failed to read the keys directory {keys_dir}: {exc.strerror}") from exc
            sources.extend((str(p), _read_file(str(p), "a signing key"), None) for p in files)
        return [_load_private_key(name, data, password) for name, data, password in sources]

    # ------------------------------------------------------------ database

    @property
    def database(self) -> dict:
        """The ``database`` section."""
        return self.section("database")

    def database_password(self) -> str | None:
        """``database.password`` or the trimmed content of ``database.password_file``."""
        db = self.database
        if db.get("password") is not None:
            return str(db["password"])
        if db.get("password_file") is not None:
            return _read_file(db["password_file"], "the database password").decode().strip()
        return None

    def database_conninfo(self) -> dict[str, Any]:
        """Keyword arguments for :func:`psycopg.connect` built from ``database``.

        ``uri`` is passed as ``conninfo``; otherwise ``host``/``socket``, ``port``,
        ``username``, ``password``/``password_file`` and ``database`` map to libpq
        parameters (unset ones fall back to libpq's ``PG*`` defaults, like sqlx).
        """
        db = self.database
        if db.get("uri"):
            params: dict[str, Any] = {"conninfo": str(db["uri"])}
        else:
            params = {"conninfo": ""}
            host = db.get("socket") or db.get("host")
            if host:
                params["host"] = str(host)
            for key, target in (("port", "port"), ("username", "user"), ("database", "dbname")):
                if db.get(key) is not None:
                    params[target] = str(db[key])
            password = self.database_password()
            if password is not None:
                params["password"] = password
        if db.get("ssl_mode"):
            params["sslmode"] = str(db["ssl_mode"]).replace("_", "-").lower()
        params["connect_timeout"] = int(db.get("connect_timeout") or 30)
        return params

    def connect(self, autocommit: bool = False):
        """Open a psycopg connection to the MAS database.

        Raises:
            ConfigError: ``could not connect to the database`` (also forced by
                ``MAS_DOUBLE_FAULT=refuse``), with the driver's reason.
        """
        import psycopg  # local import: config check must work without a database driver

        if faults.active("refuse"):
            raise ConfigError(
                "could not connect to the database\n\nCaused by:\n"
                "    0: error communicating with database: Connection refused (os error 111)\n"
                "    1: Connection refused (os error 111)"
            )
        params = self.database_conninfo()
        conninfo = params.pop("conninfo")
        try:
            return psycopg.connect(conninfo, autocommit=autocommit, **params)
        except psycopg.Error as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"could not connect to the database\n\nCaused by:\n    {reason}") from exc

    # ----------------------------------------------------------- passwords

    @property
    def passwords(self) -> dict:
        """The ``passwords`` section."""
        return self.section("passwords")

    @property
    def passwords_enabled(self) -> bool:
        """``passwords.enabled`` (default true)."""
        return bool(self.passwords.get("enabled", True))

    @property
    def minimum_complexity(self) -> int:
        """``passwords.minimum_complexity`` (default 3)."""
        return int(self.passwords.get("minimum_complexity", 3))

    def password_schemes(self) -> list[PasswordScheme]:
        """Resolved hashing schemes, highest version (the one that hashes) first."""
        entries = self.passwords.get("schemes")
        if entries is None:
            entries = DEFAULT_SCHEMES
        schemes = []
        for entry in entries:
            error = _pair_error(entry, "secret", "secret_file", required=False)
            if error:
                raise ConfigError(error)
            if entry.get("secret") is not None:
                secret: bytes | None = str(entry["secret"]).encode()
            elif entry.get("secret_file") is not None:
                secret = _read_file(entry["secret_file"], "a password scheme secret")
            else:
                secret = None
            schemes.append(
                PasswordScheme(
                    version=int(entry["version"]),
                    algorithm=str(entry["algorithm"]),
                    cost=int(entry.get("cost") or 12),
                    secret=secret,
                    unicode_normalization=bool(entry.get("unicode_normalization", False)),
                )
            )
        return sorted(schemes, key=lambda s: s.version, reverse=True)

    # ---------------------------------------------------- clients & policy

    @property
    def clients(self) -> list[dict]:
        """The static ``clients`` entries (as written)."""
        value = self.raw.get("clients")
        return list(value) if isinstance(value, list) else []

    def find_client(self, client_id: str) -> dict | None:
        """Return the static client with ``client_id`` (or None)."""
        return next((c for c in self.clients if c.get("client_id") == client_id), None)

    @staticmethod
    def client_secret(client: dict) -> str | None:
        """A client's secret (``client_secret`` or the trimmed ``client_secret_file``)."""
        if client.get("client_secret") is not None:
            return str(client["client_secret"])
        if client.get("client_secret_file") is not None:
            return _read_file(client["client_secret_file"], "a client secret").decode().strip()
        return None

    @property
    def policy_data(self) -> dict:
        """``policy.data`` (an arbitrary mapping)."""
        data = self.section("policy").get("data")
        return data if isinstance(data, dict) else {}

    @property
    def admin_clients(self) -> list[str]:
        """``policy.data.admin_clients``: clients allowed the ``urn:mas:admin`` scope."""
        return [str(c) for c in self.policy_data.get("admin_clients") or []]

    # ------------------------------------------------------- upstream & email

    @property
    def upstream_providers(self) -> list[dict]:
        """``upstream_oauth2.providers`` (as written)."""
        return list(self.section("upstream_oauth2").get("providers") or [])

    @staticmethod
    def provider_client_secret(provider: dict) -> str | None:
        """An upstream provider's ``client_secret`` or trimmed ``client_secret_file``."""
        if provider.get("client_secret") is not None:
            return str(provider["client_secret"])
        if provider.get("client_secret_file") is not None:
            return _read_file(provider["client_secret_file"], "a provider client secret").decode().strip()
        return None

    def email_password(self) -> str | None:
        """``email.password`` or the trimmed content of ``email.password_file``."""
        email = self.section("email")
        if email.get("password") is not None:
            return str(email["password"])
        if email.get("password_file") is not None:
            return _read_file(email["password_file"], "the SMTP password").decode().strip()
        return None


# --------------------------------------------------------------------- checks


def _where(path: list) -> str:
    return ".".join(str(p) for p in path)


def schema_errors(raw: dict) -> list[str]:
    """Validate ``raw`` against the upstream ``config.schema.json``.

    Returns figment-like messages (empty when valid).

    Raises:
        ConfigError: the upstream schema file is not available.
    """
    import jsonschema  # local import: only config checks need it

    try:
        schema_path = upstream.config_schema()
    except upstream.UpstreamMissing as exc:
        raise ConfigError(f"cannot validate the configuration: {exc}") from exc
    schema = json.loads(schema_path.read_text())
    validator_cls = jsonschema.validators.validator_for(schema)
    validator = validator_cls(schema, format_checker=validator_cls.FORMAT_CHECKER)
    messages = []
    for error in sorted(validator.iter_errors(raw), key=lambda e: [str(p) for p in e.absolute_path]):
        location = _where(list(error.absolute_path))
        sensitive = any(
            isinstance(part, str) and any(word in part for word in _SENSITIVE_WORDS) for part in error.absolute_path
        )
        if error.validator == "required":
            missing = error.message.split("'")[1] if "'" in error.message else error.message
            message = f"missing field `{missing}`"
        elif sensitive:
            message = f"invalid value (fails `{error.validator}`; value not shown)"
        else:
            message = error.message
        messages.append(f'{message} for key "default.{location}"' if location else message)
    return messages


def _check_url(value: Any, key: str) -> str | None:
    parts = urlsplit(str(value))
    if not parts.scheme or not parts.netloc:
        return f'relative URL without a base for key "default.{key}"'
    return None


def runtime_errors(config: MasConfig, sections: tuple[str, ...] | None = None) -> list[str]:
    """The checks MAS does after deserialising (not expressible in the schema).

    Args:
        config: the loaded configuration.
        sections: restrict to these top-level sections (default: all of them,
            as ``RootConfig::extract`` does for ``server``, ``doctor`` and ``config check``).
    """
    wanted = set(sections) if sections else None

    def want(name: str) -> bool:
        return wanted is None or name in wanted

    raw = config.raw
    errors: list[str] = []
    if want("secrets"):
        if not isinstance(raw.get("secrets"), dict):
            errors.append("missing field `secrets`")
        else:
            secrets_cfg = raw["secrets"]
            error = _pair_error(secrets_cfg, "encryption", "encryption_file", required=True)
            if error:
                errors.append(f'{error} for key "default.secrets"')
            for index, key in enumerate(secrets_cfg.get("keys") or []):
                for inline, file_key in (("key", "key_file"), ("password", "password_file")):
                    error = _pair_error(key, inline, file_key, required=inline == "key")
                    if error:
                        errors.append(f'{error} for key "default.secrets.keys.{index}"')
    if want("matrix"):
        if not isinstance(raw.get("matrix"), dict):
            errors.append("missing field `matrix`")
        else:
            error = _pair_error(raw["matrix"], "secret", "secret_file", required=True)
            if error:
                errors.append(f'{error} for key "default.matrix"')
            error = _check_url(config.endpoint, "matrix.endpoint")
            if error:
                errors.append(error)
    if want("http") and isinstance(raw.get("http"), dict):
        for key in ("public_base", "issuer"):
            if raw["http"].get(key):
                error = _check_url(raw["http"][key], f"http.{key}")
                if error:
                    errors.append(error)
        for listener in config.listeners:
            if not listener.get("resources"):
                errors.append("listener has no resources")
            if not listener.get("binds"):
                errors.append("listener does not bind to any address")
    if want("database"):
        db = config.database
        individual = ("host", "port", "socket", "username", "password", "password_file", "database")
        if db.get("uri") and any(db.get(k) is not None for k in individual):
            errors.append(
                '`uri` must not be specified together with the individual connection options for key "default.database"'
            )
        error = _pair_error(db, "password", "password_file", required=False)
        if error:
            errors.append(f'{error} for key "default.database"')
    if want("passwords"):
        passwords = config.passwords
        if passwords.get("enabled", True):
            schemes = passwords.get("schemes")
            if schemes is not None and not schemes:
                errors.append('Requires at least one password scheme in the config for key "default.passwords"')
            versions = [s.get("version") for s in schemes or []]
            if len(versions) != len(set(versions)):
                errors.append('Multiple password schemes have the same versions for key "default.passwords"')
            for scheme in schemes or []:
                error = _pair_error(scheme, "secret", "secret_file", required=False)
                if error:
                    errors.append(f'{error} for key "default.passwords"')
    if want("email"):
        email = config.section("email")
        error = _pair_error(email, "password", "password_file", required=False)
        if error:
            errors.append(f'{error} for key "default.email"')
    if want("clients"):
        for index, client in enumerate(config.clients):
            error = _pair_error(client, "client_secret", "client_secret_file", required=False)
            if error:
                errors.append(f'{error} for key "default.clients.{index}"')
    if want("upstream_oauth2"):
        for index, provider in enumerate(config.upstream_providers):
            error = _pair_error(provider, "client_secret", "client_secret_file", required=False)
            if error:
                errors.append(f'{error} for key "default.upstream_oauth2.providers.{index}"')
    return errors


def check(config: MasConfig, schema: bool = True, sections: tuple[str, ...] | None = None) -> None:
    """Validate ``config``; raise :class:`ConfigError` with the first problem.

    Args:
        config: the loaded configuration.
        schema: also validate against the upstream JSON schema (``config check``,
            ``server``, ``doctor``).
        sections: restrict the runtime checks to these sections.
    """
    errors = schema_errors(config.raw) if schema else []
    errors += runtime_errors(config, sections)
    if errors:
        raise ConfigError(errors[0])
