"""What the syn2mas unit tests share: the formula's modules, the secrets to look for, ``mas-cli syn2mas``'s and
``pg_dump``'s canned answers (:class:`FakeCli`), the stand-ins of a run's PostgreSQL readers
(:class:`OrchestrationStubs`), the map of a test's world and a SQLite Synapse."""

import json
import os
import sqlite3
import stat
from pathlib import Path

import yaml

from formula_modules import DEFAULTS, MODULES, STATES
from harness.util import free_port
from pillars import deep_update

mas = MODULES["mas"]
syn2mas = MODULES["mas_syn2mas"]
syn2mas_state = STATES["mas_syn2mas"]

PEPPER = "Pepper-Of-Synapse-0001"


DB_PASSWORD = "Synapse-Db-Password-0002"


MACAROON = "Macaroon-Secret-Key-0003"


SHARED = "Shared-Secret-In-File-0004"


PILLAR_SMTP = "Smtp-Pillar-Password-0005"


SECRETS = (PEPPER, DB_PASSWORD, MACAROON, SHARED, PILLAR_SMTP)


ERRORS_AND_WARNINGS = (
    "2026-01-01T00:00:00.000000Z  INFO mas_cli::commands::syn2mas:1 Running checks\n"
    "\n\n===== Errors =====\n"
    "These issues prevent migrating from Synapse to MAS right now:\n\n"
    "• Guest support is enabled in the Synapse configuration.\n\n"
    "• Password scheme version '1' in the MAS config must have the same secret as the `pepper` value\n"
    "  from Synapse, so that Synapse passwords can be imported.\n\n"
    "\n\n===== Warnings =====\n"
    "These potential issues should be considered before migrating from Synapse to MAS right now:\n\n"
    "• Synapse config has registration enabled. This must be disabled after migration before bringing "
    "Synapse back online.\n\n"
)


WARNINGS_ONLY = (
    "\n\n===== Warnings =====\n"
    "These potential issues should be considered before migrating from Synapse to MAS right now:\n\n"
    "• Synapse database contains 1 non-email 3PIDs (probably phone numbers), which will be migrated but are not "
    "supported by MAS.\n\n"
)


CHECK_OK = {"retcode": 0, "stdout": "Check completed successfully with no errors or warnings.\n", "stderr": ""}


MIGRATE_OK = {"retcode": 0, "stdout": "", "stderr": "2026-01-01T00:00:00Z  INFO syn2mas: migration complete\n"}


NOT_EMPTY = {
    "retcode": 1,
    "stdout": "",
    "stderr": "Error: The MAS database is not empty: rows found in at least `users`. Please drop and recreate the "
    "database, then try again.\n",
}


#: What the fake pg_dump writes.
DUMP = b"PGDMP fake custom-format dump of Synapse's database\n"


class FakeCli:
    """``cmd.run_all`` answering like ``mas-cli syn2mas`` and ``pg_dump``: ``answers[action]`` (``check``,
    ``migrate``, ``dry-run``, ``pg_dump``) is a dict or a list used in turn. A pg_dump that succeeds writes
    :data:`DUMP` into its ``--file``; what its PGPASSFILE was while it ran is kept in ``passfiles``."""

    def __init__(self):
        self.calls = []
        self.kwargs = []
        self.passfiles = []
        self.answers = {
            "check": CHECK_OK,
            "migrate": MIGRATE_OK,
            "dry-run": MIGRATE_OK,
            "pg_dump": {"retcode": 0, "stdout": "", "stderr": ""},
        }

    def __call__(self, argv, **kwargs):
        assert isinstance(argv, list) and kwargs["python_shell"] is False
        assert kwargs["output_loglevel"] == "quiet"
        self.calls.append(argv)
        self.kwargs.append(kwargs)
        action = self.action(argv)
        answer = self.answers[action]
        if isinstance(answer, list):
            answer = answer.pop(0)
        if action == "pg_dump":
            passfile = (kwargs.get("env") or {}).get("PGPASSFILE")
            if passfile:
                self.passfiles.append((passfile, stat.S_IMODE(os.stat(passfile).st_mode), Path(passfile).read_text()))
            if answer["retcode"] == 0:
                # pg_dump's directory format: a table of contents and one file per table's data
                target = Path(argv[argv.index("--file") + 1])
                (target / "toc.dat").write_bytes(DUMP)
                (target / "3456.dat").write_bytes(b"rows\n")
        return dict(answer, pid=1)

    @staticmethod
    def action(argv):
        if os.path.basename(argv[0]) == "pg_dump":
            return "pg_dump"
        return "dry-run" if "--dry-run" in argv else argv[-1]

    @property
    def actions(self):
        """The mas-cli runs, in order (``check``, ``migrate``, ``dry-run``)."""
        return [self.action(argv) for argv in self.calls if self.action(argv) != "pg_dump"]

    @property
    def dumps(self):
        """``(argv, kwargs)`` of each pg_dump run."""
        return [
            (argv, kwargs)
            for argv, kwargs in zip(self.calls, self.kwargs, strict=True)
            if self.action(argv) == "pg_dump"
        ]


class OrchestrationStubs:
    """For the tests of a run's orchestration: stand-ins for its three PostgreSQL readers (the preflight's
    checks, the backup's size estimate, the verification's comparison); ``calls`` lists what was asked."""

    def __init__(self):
        self.preflight_errors, self.preflight_warnings, self.verify_errors = [], [], []
        self.plan_problems, self.calls = [], []

    def preflight(self, mas, opts, marker, files, conf, secrets, mas_database, pillar_pepper=None):
        self.calls.append("preflight")
        return {
            "errors": list(self.preflight_errors),
            "warnings": list(self.preflight_warnings),
            "notes": [],
            "counts": {"users": {"local": 3}},
            "synapse_database": "PostgreSQL database synapse",
            "mas_database": mas_database["label"],
            "synapse_configs": files,
        }

    def backup_plan(self, mas, opts, database, secrets):
        self.calls.append("backup check")
        if self.plan_problems:
            return None, list(self.plan_problems)
        os.makedirs(opts["backup_dir"], mode=0o700, exist_ok=True)
        return {"dir": opts["backup_dir"], "estimate": len(DUMP), "free": 1 << 30}, []

    def verify(self, mas, opts, conf, files, secrets, mas_database):
        self.calls.append("verify")
        users = {"synapse": {"users": 3}, "mas": {"users": 3 - len(self.verify_errors)}}
        return {"errors": list(self.verify_errors), "counts": users, "missing": {}}


def mapdata(world, **overrides):
    data = deep_update(
        DEFAULTS,
        {
            "enabled": True,
            "server_name": "example.com",
            "base_path": str(world["base"]),
            "runtime": "binary",
            "binary": {"path": str(world["base"] / "bin" / "mas-cli"), "share_dir": "/usr/local/share/mas-cli"},
            "user": "root",
            "group": "root",
            "migration_in_progress": True,
            "service": {"manage": False},
            "synapse": {
                "config_files": [str(world["hs"])],
                "config_dir": str(world["conf_d"]),
                "user": "root",
                "group": "root",
                "endpoint": "http://127.0.0.1:8008/",
            },
            "http": {"internal_bind": "127.0.0.1:8081"},
            "syn2mas": {"backup_dir": str(world["tmp"] / "backups")},
        },
    )
    return mas.settings(deep_update(data, overrides))


def marker(world):
    path = world["base"] / "formula" / "syn2mas.json"
    return json.loads(path.read_text()) if path.exists() else None


def assert_no_secret(value):
    text = json.dumps(value) if not isinstance(value, str) else value
    for secret in SECRETS:
        assert secret not in text


def synapse_sqlite(world, users=(), external_ids=()):
    """Point Synapse's config at a SQLite database holding ``users`` (Synapse's columns the guard reads).

    ``users``: ``(name, password_hash, admin, deactivated, is_guest, appservice_id)``.
    """
    path = world["tmp"] / "homeserver.db"
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE users (name TEXT, password_hash TEXT, creation_ts BIGINT, admin SMALLINT DEFAULT 0 NOT NULL, "
        "upgrade_ts BIGINT, is_guest SMALLINT DEFAULT 0 NOT NULL, appservice_id TEXT, consent_version TEXT, "
        "consent_server_notice_sent TEXT, user_type TEXT, deactivated SMALLINT DEFAULT 0 NOT NULL, "
        "shadow_banned BOOLEAN, consent_ts BIGINT, approved BOOLEAN, locked BOOLEAN DEFAULT FALSE NOT NULL, "
        "suspended BOOLEAN DEFAULT FALSE NOT NULL, UNIQUE(name));"
        "CREATE TABLE user_external_ids (auth_provider TEXT NOT NULL, external_id TEXT NOT NULL, "
        "user_id TEXT NOT NULL, UNIQUE (auth_provider, external_id));"
    )
    conn.executemany(
        "INSERT INTO users (name, password_hash, creation_ts, admin, deactivated, is_guest, appservice_id) "
        "VALUES (?, ?, 1700000000, ?, ?, ?, ?)",
        list(users),
    )
    conn.executemany("INSERT INTO user_external_ids VALUES (?, ?, ?)", list(external_ids))
    conn.commit()
    conn.close()
    conf = yaml.safe_load(world["hs"].read_text())
    conf["database"] = {"name": "sqlite3", "args": {"database": str(path)}}
    world["hs"].write_text(yaml.safe_dump(conf))
    return path


def dropin(world):
    (world["conf_d"] / "matrix-authentication-service.yaml").write_text("matrix_authentication_service: {}\n")


LOGIN_USERS = [
    ("@alice:example.com", "$2b$12$hash", 1, 0, 0, None),  # password
    ("@bob:example.com", None, 0, 0, 0, None),  # OIDC only
    ("@bridge:example.com", None, 0, 0, 0, "bridge"),  # application service: does not log in
    ("@gone:example.com", "$2b$12$hash", 0, 1, 0, None),  # deactivated
    ("@guest:example.com", None, 0, 0, 1, None),  # guest
]


def synapse_unreachable(world):
    """Point Synapse's config at PostgreSQL on a port nothing listens on."""
    conf = yaml.safe_load(world["hs"].read_text())
    conf["database"]["args"].update(host="127.0.0.1", port=free_port())
    world["hs"].write_text(yaml.safe_dump(conf))


def told_straight(comment):
    """A comment an operator reads at a bad moment: no doubled punctuation, no sentence run into the next."""
    assert ".." not in comment and " ." not in comment and ". ." not in comment, comment
    assert "stays stopped" not in comment or "DOWN" not in comment, comment
    return comment
