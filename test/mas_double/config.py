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
``upstream_oauth2.providers[].client_secret_file``; ``passwords.schemes[].secret_file``
and ``secrets.encryption_file`` are read verbatim, *not* trimmed.
"""

from __future__ import annotations

import copy
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from mas_double import faults, serde, upstream

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


class Panic(Exception):
    """What makes ``mas-cli`` panic (exit 101): ``thread 'main' panicked at <where>:`` then the message."""

    def __init__(self, message: str, where: str):
        super().__init__(message)
        self.where = where


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
    origins: dict[str, Path] = {}
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
        for section in data:
            origins.setdefault(str(section), path)
    return MasConfig(merged, paths, origins)


def os_error(exc: OSError) -> str:
    """An OS error as Rust's ``std::io::Error`` prints it: ``No such file or directory (os error 2)``."""
    return f"{exc.strerror} (os error {exc.errno})" if exc.errno else str(exc)


def _read_file(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"failed to read {what} from {path}: {exc.strerror}") from exc


#: PEM labels mas-keystore loads (``crates/keystore/src/lib.rs``); others are ``Unsupported PEM label``.
_PEM_LABELS = ("PRIVATE KEY", "ENCRYPTED PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY")


class KeyImportError(Exception):
    """A signing key that cannot be imported; the message is mas-keystore's ``LoadError`` or the OS error."""


def _load_private_key(data: bytes, password: bytes | None):
    """Parse a PEM or DER private key like mas-keystore (``PrivateKey::load``/``load_encrypted``).

    Raises:
        KeyImportError: with mas-keystore's wording (never the key material).
    """
    from cryptography.hazmat.primitives import serialization  # local import: only the server loads keys

    label = re.match(rb"\s*-----BEGIN ([A-Z0-9 ]+)-----", data)
    if label is not None:
        name = label.group(1).decode()
        if name not in _PEM_LABELS:
            raise KeyImportError(f'Unsupported PEM label "{name}"')
        encrypted = name == "ENCRYPTED PRIVATE KEY"
        if encrypted and password is None:
            raise KeyImportError("Key is encrypted and no password was provided")
        if not encrypted and password is not None:
            raise KeyImportError("Key is not encrypted but a password was provided")
    for loader in (serialization.load_pem_private_key, serialization.load_der_private_key):
        try:
            return loader(data, password=password)
        except (ValueError, TypeError):
            continue
    raise KeyImportError("Unsupported format")


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

    def __init__(self, raw: dict, paths: list[Path], origins: dict[str, Path] | None = None):
        self.raw = raw
        self.paths = paths
        self.origins = origins or {}

    def origin(self, section: str) -> Path | None:
        """The file that first defined top-level ``section`` (None: environment or default)."""
        return self.origins.get(section)

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
            return bytes.fromhex(str(secrets_cfg["encryption"]))  # checked by config check (_secrets)
        # read raw, not trimmed: hex::decode_to_slice (secrets.rs `encryption`)
        content = _read_file(secrets_cfg["encryption_file"], "the encryption secret")
        bad = next((i for i, b in enumerate(content) if chr(b) not in "0123456789abcdefABCDEF"), None)
        if len(content) % 2:
            cause = "Odd number of digits"
        elif len(content) != 64:
            cause = "Invalid string length"
        elif bad is not None:
            cause = f"Invalid character {chr(content[bad])!r} at position {bad}"
        else:
            return bytes.fromhex(content.decode())
        raise ConfigError(
            "Content of `encryption_file` must contain hex characters encoding exactly 32 bytes"
            f"\n\nCaused by:\n    {cause}"
        )

    def signing_keys(self) -> list:
        """Load the private keys of ``secrets.keys_dir`` and ``secrets.keys`` (as MAS does at startup).

        Keys are PEM or DER (PKCS#1, PKCS#8 (possibly encrypted with
        ``password``/``password_file``) or SEC1); returns ``cryptography`` key objects.

        Raises:
            ConfigError: ``could not import keys from config`` caused by the bare OS error of an
                unreadable file or directory, or mas-keystore's error (``crates/cli/src/commands/server.rs``,
                ``crates/config/src/sections/secrets.rs``).
        """
        try:
            return [_load_private_key(data, password) for data, password in self._key_sources()]
        except (OSError, KeyImportError) as exc:
            cause = os_error(exc) if isinstance(exc, OSError) else str(exc)
            raise ConfigError(f"could not import keys from config\n\nCaused by:\n    {cause}") from exc

    def _key_sources(self) -> list[tuple[bytes, bytes | None]]:
        """``(key bytes, password)`` of every key: the files of ``keys_dir`` first, then ``keys``."""
        secrets_cfg = self.section("secrets")
        sources: list[tuple[bytes, bytes | None]] = []
        keys_dir = secrets_cfg.get("keys_dir")
        if keys_dir:
            files = sorted(p for p in Path(keys_dir).iterdir() if p.is_file())
            sources.extend((p.read_bytes(), None) for p in files)
        for entry in secrets_cfg.get("keys") or []:
            if entry.get("password") is not None:
                password: bytes | None = str(entry["password"]).encode()
            elif entry.get("password_file") is not None:
                password = Path(entry["password_file"]).read_bytes()
            else:
                password = None
            if entry.get("key") is not None:
                sources.append((str(entry["key"]).encode(), password))
            elif entry.get("key_file") is not None:
                sources.append((Path(entry["key_file"]).read_bytes(), password))
        return sources

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
        """Return the static client with ``client_id`` (or None), its ``client_id`` canonical.

        MAS parses both IDs as ULIDs (case-insensitive) and knows the client by the
        canonical upper-case form: that is what its policy compares with
        ``policy.data.admin_clients`` and what its tokens name.
        """
        wanted = str(client_id).upper()
        client = next((c for c in self.clients if str(c.get("client_id")).upper() == wanted), None)
        return None if client is None else {**client, "client_id": wanted}

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


#: Keys whose schema rule MAS really enforces in code, with its own wording (see runtime_errors).
_RUNTIME_CHECKED = frozenset({"secrets.encryption"})
#: Strings MAS reads more widely than the schema says: ULIDs (the schema's pattern is upper case, the ulid
#: crate reads either; mas_double.serde words its refusals) and JWS algorithms (mas-iana's enums keep any
#: other name as ``Unknown``, so config check accepts any string, '' included)
_STRING_KEYS = re.compile(
    r"clients\.\d+\.client_id|upstream_oauth2\.providers\.\d+\."
    r"(?:id|token_endpoint_auth_signing_alg|id_token_signed_response_alg|userinfo_signed_response_alg)"
)


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
        if location in _RUNTIME_CHECKED or (isinstance(error.instance, str) and _STRING_KEYS.fullmatch(location)):
            continue
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


def printed_path(path: Path, cwd: Path | None = None) -> str:
    """A config file's path as figment prints it: relative to the working directory when that is shorter."""
    path = Path(path)
    cwd = cwd or Path.cwd()
    try:
        relative = Path(os.path.relpath(path, cwd))
    except ValueError:
        return str(path)
    return str(relative) if len(relative.parts) < len(path.parts) else str(path)


class _Rules:
    """MAS's ``validate()`` errors, worded like figment: ``<msg> for key "default.<path>" in <file> YAML file``."""

    def __init__(self, config: MasConfig):
        self.config = config

    def at(self, message: str, *path: Any) -> str:
        key = ".".join(["default", *(str(p) for p in path)])
        origin = self.config.origin(str(path[0])) if path else None
        suffix = f" in {printed_path(origin)} YAML file" if origin is not None else ""
        return f'{message} for key "{key}"{suffix}'


def _set(mapping: dict, key: str) -> bool:
    return isinstance(mapping, dict) and mapping.get(key) is not None


#: lettre's ``Mailbox`` grammar (``addr`` or ``[display-name] <addr>``), see FIDELITY.md.
_ATOM = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\u0080-\U0010ffff]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_WORD = rf"(?:{_ATOM}|{_QUOTED})"
_PHRASE = rf"{_WORD}(?:\s+{_WORD}|\.)*"
_ADDR = rf"(?:{_ATOM}(?:\.{_ATOM})*|{_QUOTED})@(?P<domain>[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)"


def mailbox_error(value: Any) -> str | None:
    """None when ``value`` parses as one lettre ``Mailbox``, else lettre's ``AddressError`` text."""
    text = str(value).strip()
    match = re.fullmatch(rf"(?:(?:{_PHRASE})?\s*<\s*(?P<a1>{_ADDR.replace('domain', 'd1')})\s*>|(?P<a2>{_ADDR}))", text)
    if match is None:
        return "Missing domain or user" if "@" not in text else "Invalid input"
    address = match.group("a1") or match.group("a2")
    local, _, domain = address.rpartition("@")
    if len(local) > 64:
        return "Invalid email user"
    labels = domain.split(".")
    if len(domain) > 254 or any(not p or len(p) > 63 or not (p[0].isalnum() and p[-1].isalnum()) for p in labels):
        return "Invalid email domain"
    return None


def _telemetry_error(config: MasConfig) -> str | None:
    """The telemetry section's types (keyed like ``extract_inner`` keys them:
    ``default.<path>.telemetry``), then TE-1: sample rates in [0, 1] (with no key)."""
    raw = config.raw
    telemetry = raw.get("telemetry") if isinstance(raw.get("telemetry"), dict) else {}
    origin = config.origin("telemetry")
    suffix = f" in {printed_path(origin)} YAML file" if origin is not None else ""
    types = serde.telemetry_errors(
        telemetry, lambda message, *path: f'{message} for key "default.{_where([*path, "telemetry"])}"{suffix}'
    )
    if types:
        return types[0]
    checks = (
        (("sentry", "sample_rate"), "Sentry sample rate must be between 0.0 and 1.0"),
        (("sentry", "traces_sample_rate"), "Sentry sample rate must be between 0.0 and 1.0"),
        (("tracing", "sample_rate"), "Tracing sample rate must be between 0.0 and 1.0"),
    )
    for (section, key), message in checks:
        value = (telemetry.get(section) or {}).get(key) if isinstance(telemetry.get(section), dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not 0.0 <= value <= 1.0:
            return message
    return None


def telemetry_check(config: MasConfig) -> None:
    """What every mas-cli command does first (``main.rs``): load the telemetry section, then
    ``sentry::init`` with its DSN, which panics on one sentry-types cannot parse."""
    error = _telemetry_error(config)
    if error:
        raise ConfigError(f"Failed to load telemetry config\n\nCaused by:\n    {error}")
    sentry = config.section("telemetry").get("sentry")
    dsn_error = serde.dsn_error(sentry.get("dsn")) if isinstance(sentry, dict) else None
    if dsn_error:
        raise Panic(f"invalid value for DSN: {dsn_error}", "sentry-core/src/clientoptions.rs")


def _clients(rules: _Rules, raw: dict) -> str | None:
    for index, client in enumerate(raw.get("clients") or []):
        if not isinstance(client, dict):
            continue
        if _set(client, "client_secret") and _set(client, "client_secret_file"):
            return rules.at("Cannot specify both `client_secret` and `client_secret_file`", "clients", index)
        method = client.get("client_auth_method")
        secret = _set(client, "client_secret") or _set(client, "client_secret_file")
        jwks, jwks_uri = _set(client, "jwks"), _set(client, "jwks_uri")
        if method == "private_key_jwt":
            if not jwks and not jwks_uri:
                message = "jwks or jwks_uri is required for private_key_jwt"
                return rules.at(message, "clients", index, "client_auth_method")
            if jwks and jwks_uri:
                return rules.at("jwks and jwks_uri are mutually exclusive", "clients", index, "jwks")
            if secret:
                message = "client_secret is not allowed with private_key_jwt"
                return rules.at(message, "clients", index, "client_secret")
        elif method in ("client_secret_basic", "client_secret_post", "client_secret_jwt"):
            if not secret:
                return rules.at(f"client_secret is required for {method}", "clients", index, "client_auth_method")
            if jwks:
                return rules.at(f"jwks is not allowed with {method}", "clients", index, "jwks")
            if jwks_uri:
                return rules.at(f"jwks_uri is not allowed with {method}", "clients", index, "jwks_uri")
        elif method == "none":
            if secret:
                message = "client_secret is not allowed with none authentication method"
                return rules.at(message, "clients", index, "client_secret")
            if jwks:
                return rules.at("jwks is not allowed with none authentication method", "clients", index)
            if jwks_uri:
                return rules.at("jwks_uri is not allowed with none authentication method", "clients", index)
    return None


def _http(rules: _Rules, raw: dict) -> str | None:
    http = raw.get("http")
    if not isinstance(http, dict):
        return None
    for key in ("public_base", "issuer"):
        value = http.get(key)
        if value is not None and not urlsplit(str(value)).scheme:
            return rules.at(f"relative URL without a base: {json.dumps(str(value))}", "http", key)
    for index, listener in enumerate(http.get("listeners") or []):
        if not isinstance(listener, dict):
            continue
        for j, bind in enumerate(listener.get("binds") or []):
            if not isinstance(bind, dict):
                message = "data did not match any variant of untagged enum BindConfig"
                return rules.at(message, "http", "listeners", index, "binds", j)
        if not listener.get("resources"):
            return rules.at("listener has no resources", "http", "listeners", index)
        if not listener.get("binds"):
            return rules.at("listener does not bind to any address", "http", "listeners", index)
        tls = listener.get("tls")
        if isinstance(tls, dict):
            pairs = (
                ("certificate", "certificate_file", "TLS configuration is missing a certificate", True),
                ("key", "key_file", "TLS configuration is missing a private key", True),
                ("password", "password_file", None, False),
            )
            for inline, file_key, missing, required in pairs:
                if _set(tls, inline) and _set(tls, file_key):
                    message = f"Only one of `{inline}` or `{file_key}` can be set at a time"
                    return rules.at(message, "http", "listeners", index)
                if required and not (_set(tls, inline) or _set(tls, file_key)):
                    return rules.at(missing, "http", "listeners", index)
    return None


def _database(rules: _Rules, raw: dict) -> str | None:
    db = raw.get("database")
    if not isinstance(db, dict):
        return None
    individual = ("host", "port", "socket", "username", "password", "password_file", "database")
    if _set(db, "uri") and any(_set(db, key) for key in individual):
        message = (
            "uri must not be specified if host, port, socket, username, password, password_file, or database"
            " are specified"
        )
        return rules.at(message, "database")
    for inline in ("password", "ssl_ca", "ssl_certificate", "ssl_key"):
        if _set(db, inline) and _set(db, f"{inline}_file"):
            return rules.at(f"{inline} must not be specified if {inline}_file is specified", "database")
    has_cert = _set(db, "ssl_certificate") or _set(db, "ssl_certificate_file")
    has_key = _set(db, "ssl_key") or _set(db, "ssl_key_file")
    if has_cert != has_key:
        message = "both a ssl_certificate and a ssl_key must be set at the same time or none of them"
        return rules.at(message, "database")
    return None


_SMTP_FIELDS = ("from", "reply_to", "transport", "mode", "hostname", "port", "username", "password")
_SENDMAIL_FIELDS = ("from", "reply_to", "transport", "command")


def _one_of(fields: tuple[str, ...]) -> str:
    return "one of " + ", ".join(f"`{f}`" for f in fields)


def _email(rules: _Rules, raw: dict) -> str | None:
    email = raw.get("email")
    if not isinstance(email, dict):
        return None
    transport = email.get("transport")
    if transport not in ("smtp", "sendmail"):
        return None
    for field in ("from", "reply_to"):
        error = mailbox_error(email.get(field, '"Authentication Service" <root@localhost>'))
        if error:
            return rules.at(error, "email", field)
    if transport == "smtp":
        has_password = _set(email, "password") or _set(email, "password_file")
        if _set(email, "username") and not has_password:
            return rules.at("missing field `password`", "email", "password")
        if has_password and not _set(email, "username"):
            return rules.at("missing field `username`", "email", "username")
        if _set(email, "password") and _set(email, "password_file"):
            return rules.at("duplicate field `password_file`", "email", "password")
        for field in ("mode", "hostname"):
            if not _set(email, field):
                return rules.at(f"missing field `{field}`", "email", field)
        if _set(email, "command"):
            message = f"unknown field: found `command`, expected `{_one_of(_SMTP_FIELDS)}`"
            return rules.at(message, "email", "command")
        return None
    if not _set(email, "command"):
        return rules.at("missing field `command`", "email", "command")
    for field in ("mode", "hostname", "port", "username", "password"):
        if _set(email, field):
            message = f"unknown field: found `{field}`, expected `{_one_of(_SENDMAIL_FIELDS)}`"
            return rules.at(message, "email", field)
    return None


def _passwords(rules: _Rules, raw: dict) -> str | None:
    passwords = raw.get("passwords")
    if not isinstance(passwords, dict) or passwords.get("enabled", True) is False:
        return None
    schemes = passwords.get("schemes", DEFAULT_SCHEMES)
    if not schemes:
        return rules.at("Requires at least one password scheme in the config", "passwords")
    for scheme in schemes:
        if _set(scheme, "secret") and _set(scheme, "secret_file"):
            return rules.at("Cannot specify both `secret` and `secret_file`", "passwords")
    return None


def _secrets(rules: _Rules, raw: dict) -> str | None:
    secrets_cfg = raw["secrets"]
    for index, key in enumerate(secrets_cfg.get("keys") or []):
        if not isinstance(key, dict):
            continue
        for inline, file_key, required in (("key", "key_file", True), ("password", "password_file", False)):
            error = _pair_error(key, inline, file_key, required=required)
            if error:
                return rules.at(error, "secrets", "keys", index)
    error = _pair_error(secrets_cfg, "encryption", "encryption_file", required=True)
    if error:
        return rules.at(error, "secrets")
    if _set(secrets_cfg, "encryption"):
        text = str(secrets_cfg["encryption"])
        bad = next((i for i, c in enumerate(text) if c not in "0123456789abcdefABCDEF"), None)
        if bad is not None:
            return rules.at(f"Invalid character {text[bad]!r} at position {bad}", "secrets")
        if len(text) % 2:
            return rules.at("Odd number of digits", "secrets")
        if len(text) != 64:
            return rules.at(f"Can't convert a Byte Vector of length {len(text) // 2} to the output type.", "secrets")
    return None


def _matrix(rules: _Rules, raw: dict) -> str | None:
    error = _pair_error(raw["matrix"], "secret", "secret_file", required=True)
    return rules.at(error, "matrix") if error else None


_LIMITERS = (
    ("account_recovery", "per_ip"),
    ("account_recovery", "per_address"),
    ("registration", None),
    ("login", "per_ip"),
    ("login", "per_account"),
)


def _rate_limiting(rules: _Rules, raw: dict) -> str | None:
    limits = raw.get("rate_limiting")
    if not isinstance(limits, dict):
        return None
    for container, field in _LIMITERS:
        limiter = limits.get(container)
        if field is not None:
            limiter = limiter.get(field) if isinstance(limiter, dict) else None
        if not isinstance(limiter, dict) or not isinstance(limiter.get("per_second"), (int, float)):
            continue
        rate = float(limiter["per_second"])
        if rate <= 0 or rate > 1e9:
            message = "`per_second` must be a number that is more than zero and less than 1_000_000_000 (1e9)"
            path = ("rate_limiting", container) + ((field,) if field else ())
            return rules.at(message, *path)
    return None


_SECRET_METHODS = ("client_secret_basic", "client_secret_post", "client_secret_jwt")
_SIGNING_METHODS = ("client_secret_jwt", "private_key_jwt")


def _upstream(rules: _Rules, raw: dict) -> str | None:
    section = raw.get("upstream_oauth2")
    if not isinstance(section, dict):
        return None
    for index, provider in enumerate(section.get("providers") or []):
        if not isinstance(provider, dict):
            continue
        key = ("upstream_oauth2", "providers", index)
        if _set(provider, "client_secret") and _set(provider, "client_secret_file"):
            return rules.at("Cannot specify both `client_secret` and `client_secret_file`", *key)
        if provider.get("discovery_mode", "oidc") != "disabled" and not _set(provider, "issuer"):
            return rules.at("The `issuer` field is required when discovery is enabled", *key)
        method = provider.get("token_endpoint_auth_method")
        secret = _set(provider, "client_secret") or _set(provider, "client_secret_file")
        if method in ("none", "private_key_jwt", "sign_in_with_apple") and secret:
            return rules.at("Unexpected field `client_secret` for the selected authentication method", *key)
        if method in _SECRET_METHODS and not secret:
            return rules.at("missing field `client_secret`", *key)
        signing_alg = _set(provider, "token_endpoint_auth_signing_alg")
        if method not in _SIGNING_METHODS and signing_alg:
            message = "Unexpected field `token_endpoint_auth_signing_alg` for the selected authentication method"
            return rules.at(message, *key)
        if method in _SIGNING_METHODS and not signing_alg:
            return rules.at("missing field `token_endpoint_auth_signing_alg`", *key)
        apple = _set(provider, "sign_in_with_apple")
        if method == "sign_in_with_apple" and not apple:
            return rules.at("missing field `sign_in_with_apple`", *key)
        if method != "sign_in_with_apple" and apple:
            return rules.at("Unexpected field `sign_in_with_apple` for the selected authentication method", *key)
        imports = provider.get("claims_imports") if isinstance(provider.get("claims_imports"), dict) else {}
        localpart = imports.get("localpart") if isinstance(imports.get("localpart"), dict) else {}
        if imports.get("skip_confirmation"):
            if localpart.get("action", "ignore") != "require":
                message = "The field `action` must be `require` when `skip_confirmation` is set to `true`"
                return rules.at(message, *key, "claims_imports", "localpart")
            for claim in ("email", "displayname"):
                claim_cfg = imports.get(claim) if isinstance(imports.get(claim), dict) else {}
                if claim_cfg.get("action") == "suggest":
                    message = "The field `action` must not be `suggest` when `skip_confirmation` is set to `true`"
                    return rules.at(message, *key, "claims_imports", claim)
        if localpart.get("on_conflict") in ("add", "replace", "set") and localpart.get("action", "ignore") not in (
            "force",
            "require",
        ):
            message = (
                "The field `action` must be either `force` or `require` when `on_conflict` is set to `add`,"
                " `replace` or `set`"
            )
            return rules.at(message, *key, "claims_imports", "localpart")
    return None


def _captcha(rules: _Rules, raw: dict) -> str | None:
    captcha = raw.get("captcha")
    if isinstance(captcha, dict) and captcha.get("service") == "recaptcha_v2":
        for field in ("site_key", "secret_key"):
            if not _set(captcha, field):
                return rules.at(f"missing field `{field}`", "captcha", field)
    return None


def _experimental(rules: _Rules, raw: dict) -> str | None:
    experimental = raw.get("experimental")
    limit = experimental.get("session_limit") if isinstance(experimental, dict) else None
    if not isinstance(limit, dict):
        return None
    soft, hard = limit.get("soft_limit"), limit.get("hard_limit")
    if isinstance(soft, int) and isinstance(hard, int):
        key = ("experimental", "session_limit", "hard_limit")
        if hard < soft:
            message = "Session `hard_limit` must be greater than or equal to the user-facing `soft_limit`."
            return rules.at(message, *key)
        if limit.get("dangerous_hard_limit_eviction") and hard < 2:
            message = (
                "Session `hard_limit` must be at least 2 when automatic `dangerous_hard_limit_eviction` is set."
                " See configuration docs for more info."
            )
            return rules.at(message, *key)
    return None


#: ``RootConfig::validate`` order (crates/config/src/sections/mod.rs); the first error wins.
_SECTION_RULES = (
    ("clients", _clients),
    ("http", _http),
    ("database", _database),
    ("email", _email),
    ("passwords", _passwords),
    ("secrets", _secrets),
    ("matrix", _matrix),
    ("rate_limiting", _rate_limiting),
    ("upstream_oauth2", _upstream),
    ("captcha", _captcha),
    ("experimental", _experimental),
)


def runtime_errors(config: MasConfig, sections: tuple[str, ...] | None = None) -> list[str]:
    """The ``validate()`` checks of MAS's config sections (what the JSON schema cannot say).

    Args:
        config: the loaded configuration.
        sections: restrict to these top-level sections (default: all, in
            ``RootConfig::validate`` order, as ``config check`` does).

    Only the first error of each section is reported (MAS stops at the first).
    """
    raw = config.raw
    errors: list[str] = []
    for required in ("secrets", "matrix"):
        if (sections is None or required in sections) and not isinstance(raw.get(required), dict):
            errors.append(f"missing field `{required}`")
    if errors:
        return errors
    rules = _Rules(config)
    for name, rule in _SECTION_RULES:
        if sections is not None and name not in sections:
            continue
        error = rule(rules, raw)
        if error:
            errors.append(error)
    return errors


def check(config: MasConfig, schema: bool = True, sections: tuple[str, ...] | None = None) -> None:
    """Validate ``config`` like ``config check``; raise :class:`ConfigError` with the first problem.

    Args:
        config: the loaded configuration.
        schema: also validate against the upstream JSON schema (``config check``,
            ``server``, ``doctor``).
        sections: restrict the runtime checks to these sections.
    """
    telemetry_check(config)
    rules = _Rules(config)
    errors = serde.section_errors(
        config.raw, lambda message, *path: rules.at(message, *path) if sections is None or path[0] in sections else ""
    )
    errors += schema_errors(config.raw) if schema else []
    errors += runtime_errors(config, sections)
    if errors:
        raise ConfigError(errors[0])
