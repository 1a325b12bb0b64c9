"""A real Synapse homeserver on a loopback port for integration tests.

:class:`SynapseServer` builds its ``hs.yaml`` from Synapse's own
``--generate-config`` output (secrets, signing key) and overlays a test-friendly
configuration: a single loopback HTTP listener, SQLite or a
:class:`~harness.postgres.PostgresCluster` database, no key servers, no
registration, generous rate limits and a log file in the work directory.

The server is always started with two config paths,
``-c <workdir>/hs.yaml -c <workdir>/conf.d``; Synapse reads every ``*.yaml`` of
the directory in sorted order and lets later files replace whole top-level
keys.  Tests drop the formula's rendered drop-in into :attr:`SynapseServer.conf_d`.

Running this module (``python -m harness.synapse check-config -c ... -c ...``,
with ``test/`` on ``PYTHONPATH``) loads a config the way Synapse does and prints
the error *with its causes* -- ``python -m synapse.config`` prints only the top
message.  :meth:`SynapseServer.check_config` uses it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import json
import os
import secrets
import shutil
import subprocess
import sys
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import requests
import yaml

from harness.postgres import PostgresCluster
from harness.util import LOOPBACK, free_port, run, stop_process, tail, wait_for_http

#: The ``sys.path`` entry that makes ``harness`` importable in child processes.
_TEST_DIR = Path(__file__).resolve().parents[1]

#: Generous limits so that tests never hit Synapse's rate limiter.
_NO_LIMIT = {"per_second": 1000, "burst_count": 1000}
RATE_LIMITS: dict[str, Any] = {
    "rc_message": _NO_LIMIT,
    "rc_registration": _NO_LIMIT,
    "rc_registration_token_validity": _NO_LIMIT,
    "rc_login": {"address": _NO_LIMIT, "account": _NO_LIMIT, "failed_attempts": _NO_LIMIT},
    "rc_admin_redaction": _NO_LIMIT,
    "rc_joins": {"local": _NO_LIMIT, "remote": _NO_LIMIT},
    "rc_joins_per_room": _NO_LIMIT,
    "rc_3pid_validation": _NO_LIMIT,
    "rc_invites": {"per_room": _NO_LIMIT, "per_user": _NO_LIMIT, "per_issuer": _NO_LIMIT},
    "rc_room_creation": _NO_LIMIT,
    "rc_delayed_event_mgmt": _NO_LIMIT,
    "rc_presence": {"per_user": _NO_LIMIT},
    "rc_media_create": _NO_LIMIT,
    "rc_user_directory": _NO_LIMIT,
    "rc_profile": _NO_LIMIT,
    "rc_reports": _NO_LIMIT,
}

#: Role owning the Synapse databases on a :class:`PostgresCluster`.
SYNAPSE_DB_ROLE = "synapse"
SYNAPSE_DB_PASSWORD = "synapse-test-password"  # trust auth: any password works

#: Keys of the generated config that are replaced by fresh values per server.
_SECRET_KEYS = ("registration_shared_secret", "macaroon_secret_key", "form_secret")


def generate_config(directory: Path, server_name: str) -> Path:
    """Run ``synapse.app.homeserver --generate-config`` into ``directory``.

    Returns the path of the generated ``hs.yaml`` (next to it: the signing key
    and a log config, which the harness does not use).  Takes about 2 s.
    """
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "hs.yaml"
    run(
        [
            sys.executable,
            "-m",
            "synapse.app.homeserver",
            "--generate-config",
            "--report-stats=no",
            "-H",
            server_name,
            "-c",
            str(config),
        ],
        cwd=directory,
    )
    return config


def merge_config(base: dict[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``overlay`` into ``base`` in place and return ``base``.

    Mappings merge recursively, other values replace; a ``None`` value removes
    the key (so ``extra_config={"registration_shared_secret": None}`` drops it).
    """
    for key, value in overlay.items():
        if value is None:
            base.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(base.get(key), dict):
            merge_config(base[key], value)
        else:
            base[key] = value
    return base


def _log_config(logfile: Path) -> dict[str, Any]:
    """A Python logging config writing everything (unbuffered) to ``logfile``."""
    return {
        "version": 1,
        "formatters": {
            "precise": {"format": "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s"}
        },
        "handlers": {
            "file": {
                "class": "logging.FileHandler",
                "formatter": "precise",
                "filename": str(logfile),
                "encoding": "utf8",
            }
        },
        "loggers": {"synapse.storage.SQL": {"level": "INFO"}},
        "root": {"level": "INFO", "handlers": ["file"]},
        "disable_existing_loggers": False,
    }


class SynapseServer:
    """One Synapse homeserver living in ``workdir``.

    Args:
        workdir: directory for config, conf.d, logs, media, SQLite DB.
        server_name: the Matrix server name.
        database: ``"sqlite"`` or a started :class:`PostgresCluster`; with a
            cluster the database ``dbname`` (default ``synapse_<hex>``) is
            created with Synapse's required collation, owned by role ``synapse``.
        port: the listener port (default: a free one).
        extra_config: merged into ``hs.yaml`` last (see :func:`merge_config`).
        template_dir: a directory holding a ``hs.yaml`` generated by
            :func:`generate_config` for the same ``server_name``; when given,
            the ~2 s generation is skipped (the secrets are still fresh).
        dbname: name of the PostgreSQL database.
        host: the address it listens on (default ``127.0.0.1``).

    Attributes:
        config_path, conf_d, log_path, output_path, base_url, port,
        registration_shared_secret, config (the dict written to hs.yaml).
    """

    def __init__(
        self,
        workdir: Path,
        server_name: str = "example.com",
        database: str | PostgresCluster = "sqlite",
        port: int | None = None,
        extra_config: Mapping[str, Any] | None = None,
        template_dir: Path | None = None,
        dbname: str | None = None,
        host: str = LOOPBACK,
    ):
        #: the address it listens on (another loopback address stands for another host)
        self.host = host
        self.workdir = Path(workdir)
        self.server_name = server_name
        self.database = database
        self.port = port or free_port(host)
        self.extra_config = dict(extra_config or {})
        self.dbname = dbname or f"synapse_{secrets.token_hex(4)}"
        self.config_path = self.workdir / "hs.yaml"
        self.conf_d = self.workdir / "conf.d"
        self.log_path = self.workdir / "homeserver.log"
        self.output_path = self.workdir / "stdout.log"
        self.base_url = f"http://{host}:{self.port}"
        self._proc: subprocess.Popen | None = None
        self._session = requests.Session()
        self.config = self._write_config(template_dir)

    # --------------------------------------------------------------- config

    def _base_config(self, template_dir: Path | None) -> dict[str, Any]:
        """Load a generated config, copying the signing key into ``workdir``."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if template_dir is not None and (template_dir / "hs.yaml").is_file():
            source = template_dir / "hs.yaml"
        else:
            source = generate_config(self.workdir / "generated", self.server_name)
        config = yaml.safe_load(source.read_text())
        if config.get("server_name") != self.server_name:
            raise ValueError(f"template {source} is for {config.get('server_name')!r}, not {self.server_name!r}")
        signing_key = self.workdir / f"{self.server_name}.signing.key"
        if Path(config["signing_key_path"]) != signing_key:
            shutil.copy2(config["signing_key_path"], signing_key)
        for key in _SECRET_KEYS:
            config[key] = secrets.token_urlsafe(32)
        return config

    def _database_config(self) -> dict[str, Any]:
        if isinstance(self.database, PostgresCluster):
            cluster = self.database
            cluster.create_role(SYNAPSE_DB_ROLE, password=SYNAPSE_DB_PASSWORD)
            cluster.create_database(self.dbname, owner=SYNAPSE_DB_ROLE, synapse=True, exist_ok=True)
            return {
                "name": "psycopg2",
                "args": {
                    "user": SYNAPSE_DB_ROLE,
                    "password": SYNAPSE_DB_PASSWORD,
                    "dbname": self.dbname,
                    "host": cluster.host,
                    "port": cluster.port,
                    "cp_min": 1,
                    "cp_max": 5,
                },
            }
        if self.database != "sqlite":
            raise ValueError(f"database must be 'sqlite' or a PostgresCluster, not {self.database!r}")
        return {"name": "sqlite3", "args": {"database": str(self.workdir / "homeserver.db")}}

    def _write_config(self, template_dir: Path | None) -> dict[str, Any]:
        config = self._base_config(template_dir)
        self.conf_d.mkdir(exist_ok=True)
        log_config_path = self.workdir / "log.yaml"
        log_config_path.write_text(yaml.safe_dump(_log_config(self.log_path)))
        overlay: dict[str, Any] = {
            "pid_file": str(self.workdir / "homeserver.pid"),
            "listeners": [
                {
                    "port": self.port,
                    "bind_addresses": [self.host],
                    "type": "http",
                    "tls": False,
                    "x_forwarded": True,
                    "resources": [{"names": ["client", "federation"], "compress": False}],
                }
            ],
            "database": self._database_config(),
            "log_config": str(log_config_path),
            "media_store_path": str(self.workdir / "media_store"),
            "signing_key_path": str(self.workdir / f"{self.server_name}.signing.key"),
            "public_baseurl": f"{self.base_url}/",
            "report_stats": False,
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "enable_registration": False,
            "enable_metrics": False,
            "url_preview_enabled": False,
            **RATE_LIMITS,
        }
        config.pop("database", None)  # replaced wholesale, never merged with the generated sqlite one
        merge_config(config, overlay)
        merge_config(config, self.extra_config)
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        return config

    @property
    def registration_shared_secret(self) -> str | None:
        """The shared secret of ``/_synapse/admin/v1/register`` (``None`` if removed)."""
        return self.config.get("registration_shared_secret")

    def config_args(self, *extra: str) -> list[str]:
        """The ``-c hs.yaml -c conf.d`` arguments (plus ``extra``) passed to Synapse."""
        return ["-c", str(self.config_path), "-c", str(self.conf_d), *extra]

    def check_config(self, args: Sequence[str] = ()) -> tuple[bool, str]:
        """Load the config offline the way Synapse does; return ``(ok, output)``.

        ``output`` is "Config parses OK!" or the full error including its causes
        (e.g. the pydantic reason behind "Could not validate Matrix
        Authentication Service configuration").  ``args`` are extra Synapse
        flags such as ``--no-secrets-in-config``.
        """
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(_TEST_DIR), os.environ.get("PYTHONPATH")])))
        proc = run(
            [sys.executable, "-m", "harness.synapse", "check-config", *self.config_args(*args)],
            check=False,
            cwd=self.workdir,
            env=env,
        )
        return proc.returncode == 0, (proc.stdout + proc.stderr).strip()

    def check_configs(self, variants: Sequence[Sequence[Path | str]]) -> list[tuple[bool, str]]:
        """Load several configs offline in one Python process; ``(ok, output)`` each.

        Each variant lists the config paths (files or directories) loaded after
        ``hs.yaml`` *instead of* :attr:`conf_d`.  Importing Synapse takes about
        1 s and each load about 0.1 s, so checking many variants this way is
        much faster than calling :meth:`check_config` for each.
        """
        config_sets = [[str(self.config_path), *(str(path) for path in variant)] for variant in variants]
        return check_configs(config_sets, cwd=self.workdir)

    # -------------------------------------------------------------- process

    @property
    def running(self) -> bool:
        """True while the Synapse process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 60, args: Sequence[str] = ()) -> SynapseServer:
        """Start Synapse and wait until ``/_matrix/client/versions`` answers 200.

        On failure the process is stopped and ``RuntimeError`` carries the tail
        of Synapse's output and log.  Returns ``self``.
        """
        if self.running:
            return self
        with self.output_path.open("ab") as output:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "synapse.app.homeserver", *self.config_args(*args)],
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_for_http(f"{self.base_url}/_matrix/client/versions", timeout=timeout, proc=self._proc)
        except (RuntimeError, TimeoutError) as exc:
            self.stop()
            raise RuntimeError(
                f"Synapse in {self.workdir} failed to start: {exc}\n"
                f"--- output ---\n{tail(self.output_path)}\n--- homeserver.log ---\n{tail(self.log_path)}"
            ) from exc
        return self

    def stop(self) -> None:
        """Stop Synapse (SIGTERM, then SIGKILL); a no-op when not running."""
        if self._proc is not None:
            stop_process(self._proc)
            self._proc = None

    def restart(self, timeout: float = 60, args: Sequence[str] = ()) -> SynapseServer:
        """Stop and start again (e.g. after changing files in :attr:`conf_d`)."""
        self.stop()
        return self.start(timeout=timeout, args=args)

    def __enter__(self) -> SynapseServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # ----------------------------------------------------------------- HTTP

    def user_id(self, localpart: str) -> str:
        """``@localpart:server_name``."""
        return f"@{localpart}:{self.server_name}"

    def request(self, method: str, path: str, token: str | None = None, **kwargs) -> requests.Response:
        """Send a request to ``base_url + path`` (optionally with a Bearer token)."""
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        kwargs.setdefault("timeout", 30)
        return self._session.request(method, self.base_url + path, headers=headers, **kwargs)

    def _json(self, method: str, path: str, token: str | None = None, **kwargs) -> dict[str, Any]:
        resp = self.request(method, path, token=token, **kwargs)
        if resp.status_code >= 400:
            raise SynapseAPIError(resp)
        return resp.json()

    def register_user(self, localpart: str, password: str, admin: bool = False) -> dict[str, Any]:
        """Register a user with the shared-secret admin API.

        Returns Synapse's JSON (``user_id``, ``access_token``, ``device_id``, ...);
        raises :class:`SynapseAPIError` (e.g. ``errcode == "M_USER_IN_USE"``).
        """
        secret = self.registration_shared_secret
        if not secret:
            raise RuntimeError("this server has no registration_shared_secret")
        nonce = self._json("GET", "/_synapse/admin/v1/register")["nonce"]
        message = b"\x00".join(
            [nonce.encode(), localpart.encode(), password.encode(), b"admin" if admin else b"notadmin"]
        )
        mac = hmac.new(secret.encode(), message, hashlib.sha1).hexdigest()
        body = {"nonce": nonce, "username": localpart, "password": password, "admin": admin, "mac": mac}
        return self._json("POST", "/_synapse/admin/v1/register", json=body)

    def login(self, localpart: str, password: str) -> str:
        """Log in with ``m.login.password`` and return the access token."""
        body = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": localpart},
            "password": password,
        }
        return self._json("POST", "/_matrix/client/v3/login", json=body)["access_token"]

    def whoami(self, token: str) -> dict[str, Any]:
        """``GET /_matrix/client/v3/account/whoami`` with ``token``."""
        return self._json("GET", "/_matrix/client/v3/account/whoami", token=token)

    @staticmethod
    def _admin_user_path(user_id: str) -> str:
        return "/_synapse/admin/v2/users/" + urllib.parse.quote(user_id, safe="")

    def admin_get_user(self, admin_token: str, user_id: str) -> dict[str, Any]:
        """``GET /_synapse/admin/v2/users/<user_id>``."""
        return self._json("GET", self._admin_user_path(user_id), token=admin_token)

    def admin_put_user(self, admin_token: str, user_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """``PUT /_synapse/admin/v2/users/<user_id>`` (creates or modifies a user)."""
        return self._json("PUT", self._admin_user_path(user_id), token=admin_token, json=dict(body))

    def make_admin(self, admin_token: str, user_id: str, admin: bool = True) -> dict[str, Any]:
        """Grant (or revoke) server admin rights."""
        return self.admin_put_user(admin_token, user_id, {"admin": admin})

    def add_threepid(self, admin_token: str, user_id: str, medium: str, address: str) -> dict[str, Any]:
        """Add a third-party ID, keeping the existing ones (PUT replaces the list)."""
        current = self.admin_get_user(admin_token, user_id).get("threepids", [])
        threepids = [{"medium": t["medium"], "address": t["address"]} for t in current]
        threepids.append({"medium": medium, "address": address})
        return self.admin_put_user(admin_token, user_id, {"threepids": threepids})

    def add_external_id(self, admin_token: str, user_id: str, auth_provider: str, external_id: str) -> dict[str, Any]:
        """Add an external (SSO) ID, keeping the existing ones (PUT replaces the list)."""
        current = self.admin_get_user(admin_token, user_id).get("external_ids", [])
        external_ids = [{"auth_provider": e["auth_provider"], "external_id": e["external_id"]} for e in current]
        external_ids.append({"auth_provider": auth_provider, "external_id": external_id})
        return self.admin_put_user(admin_token, user_id, {"external_ids": external_ids})

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"SynapseServer({self.server_name!r}, {self.base_url}, {state})"


class SynapseAPIError(RuntimeError):
    """A Synapse HTTP API call failed; ``status``, ``errcode`` and ``error`` describe it."""

    def __init__(self, response: requests.Response):
        self.response = response
        self.status = response.status_code
        try:
            payload = response.json()
        except ValueError:
            payload = {}
        self.errcode = payload.get("errcode") if isinstance(payload, dict) else None
        self.error = payload.get("error") if isinstance(payload, dict) else None
        super().__init__(
            f"{response.request.method} {urllib.parse.urlsplit(response.url).path} -> "
            f"{self.status} {self.errcode}: {self.error or response.text[:200]}"
        )


def check_configs(config_sets: Sequence[Sequence[Path | str]], cwd: Path | None = None) -> list[tuple[bool, str]]:
    """Load each list of config paths offline, all in one child process.

    Returns ``(ok, output)`` per set, like :meth:`SynapseServer.check_config`.
    """
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(_TEST_DIR), os.environ.get("PYTHONPATH")])))
    payload = json.dumps([[str(path) for path in paths] for paths in config_sets])
    proc = run([sys.executable, "-m", "harness.synapse", "check-configs"], input=payload, cwd=cwd, env=env)
    return [(bool(ok), output) for ok, output in json.loads(proc.stdout)]


def _load_config(argv: Sequence[str]) -> tuple[bool, str]:
    """Load a Synapse config like ``python -m synapse.config``; return ``(ok, output with causes)``."""
    from synapse.config._base import ConfigError, format_config_error
    from synapse.config.homeserver import HomeServerConfig

    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            HomeServerConfig.load_config("", list(argv))
    except ConfigError as exc:
        return False, (printed.getvalue() + "".join(format_config_error(exc))).strip()
    except Exception as exc:
        lines = []
        err: BaseException | None = exc
        while err is not None:
            lines.append(f"{type(err).__name__}: {err}")
            err = err.__cause__ or err.__context__
        return False, (printed.getvalue() + "\n".join(lines)).strip()
    return True, (printed.getvalue() + "Config parses OK!").strip()


def _check_config_main(argv: Sequence[str]) -> int:
    """Load a Synapse config like ``python -m synapse.config`` but print the causes too."""
    ok, output = _load_config(argv)
    (sys.stdout if ok else sys.stderr).write(output + "\n")
    return 0 if ok else 1


def _check_configs_main() -> int:
    """Read a JSON list of config-path lists on stdin; print a JSON list of ``[ok, output]``."""
    results = []
    for paths in json.load(sys.stdin):
        results.append(_load_config([arg for path in paths for arg in ("-c", path)]))
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "check-config":
        sys.exit(_check_config_main(sys.argv[2:]))
    if len(sys.argv) == 2 and sys.argv[1] == "check-configs":
        sys.exit(_check_configs_main())
    sys.exit(
        "usage: python -m harness.synapse check-config -c CONFIG [-c CONFIG_DIR ...]\n"
        "       python -m harness.synapse check-configs < JSON list of config-path lists"
    )
