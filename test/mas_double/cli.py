"""Command line entry point of the MAS test double (``python -m mas_double.cli``).

Implements the subset of ``mas-cli`` 1.23 the formula uses, with the same
arguments, output streams and exit codes:

* ``[-c FILE]... config check``
* ``[-c FILE]... database migrate``
* ``[-c FILE]... server [--no-migrate] [--no-worker] [--no-sync]`` (also the default command)
* ``[-c FILE]... manage register-user|add-email|verify-email|set-password|
  promote-admin|demote-admin|list-admin-users|lock-user|unlock-user ...``
* ``[-c FILE]... doctor``
* ``[-c FILE]... syn2mas [--synapse-config F]... [--synapse-database-uri URI]
  [--ignore-missing-auth-providers] (check | migrate [--dry-run])``

``-c/--config`` may be given before or after the subcommand.  Logs go to
stderr; ``Error: <message>`` and exit 1 on failures; argument errors exit 2;
a panic (a Sentry DSN sentry-types cannot parse) exits 101.
"""

from __future__ import annotations

import argparse
import os
import sys

from mas_double import config as config_mod
from mas_double import db, faults, manage
from mas_double.config import ConfigError, MasConfig, Panic
from mas_double.homeserver import HomeserverError
from mas_double.passwords import PasswordError
from mas_double.tracing import Logger

#: What ``--version`` prints (a release tarball of the double sets it, see mas_double.share).
VERSION = os.environ.get("MAS_DOUBLE_VERSION") or "1.23.0"

LOG_CONFIG = Logger("mas_cli::commands::config")
LOG_DATABASE = Logger("mas_cli::commands::database")
LOG_SYN2MAS = Logger("mas_cli::commands::syn2mas")


def _config_option(parser: argparse.ArgumentParser, dest: str) -> None:
    parser.add_argument(
        "-c", "--config", dest=dest, action="append", metavar="CONFIG", help="Path to the configuration file"
    )


def build_parser() -> argparse.ArgumentParser:
    """Build the ``mas-cli`` argument parser."""
    late = argparse.ArgumentParser(add_help=False)
    _config_option(late, "config_late")

    parser = argparse.ArgumentParser(prog="mas-cli", description="MAS test double")
    parser.add_argument("-V", "--version", action="version", version=f"mas-cli {VERSION}")
    _config_option(parser, "config")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    cfg = sub.add_parser("config", help="Configuration-related commands", parents=[late])
    cfg_sub = cfg.add_subparsers(dest="config_command", metavar="COMMAND", required=True)
    cfg_sub.add_parser("check", help="Check a config file", parents=[late]).set_defaults(handler=config_check)

    database = sub.add_parser("database", help="Manage the database", parents=[late])
    db_sub = database.add_subparsers(dest="database_command", metavar="COMMAND", required=True)
    db_sub.add_parser("migrate", help="Run database migrations", parents=[late]).set_defaults(handler=database_migrate)

    server = sub.add_parser("server", help="Runs the web server", parents=[late])
    for flag in ("--no-migrate", "--no-worker", "--no-sync"):
        server.add_argument(flag, action="store_true")
    server.set_defaults(handler=run_server)

    manage.add_parsers(sub, late)

    sub.add_parser("doctor", help="Run diagnostics on the deployment", parents=[late]).set_defaults(handler=run_doctor)

    # listed for --help only: main() hands syn2mas arguments to syn2mas_parser()
    sub.add_parser("syn2mas", help="Migrate from Synapse's built-in auth system to MAS", add_help=False)
    return parser


def syn2mas_parser() -> argparse.ArgumentParser:
    """Parser of the ``syn2mas`` arguments (global options allowed anywhere)."""
    parser = argparse.ArgumentParser(prog="mas-cli syn2mas")
    _config_option(parser, "config_late")
    parser.add_argument("--synapse-config", dest="synapse_config", action="append", default=[])
    parser.add_argument("--synapse-database-uri", dest="synapse_database_uri")
    parser.add_argument("--ignore-missing-auth-providers", action="store_true")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("subcommand", choices=["check", "migrate"])
    return parser


def parse_syn2mas(args: list[str]) -> argparse.Namespace:
    """Parse ``syn2mas`` arguments into the namespace handed to ``mas_double.syn2mas.run``.

    Attributes: ``subcommand`` (``check``/``migrate``), ``synapse_config``
    (list of paths), ``synapse_database_uri`` (str or None),
    ``ignore_missing_auth_providers`` (bool), ``dry_run`` (bool, migrate only),
    ``config_late`` (``-c`` values given after ``syn2mas``).
    """
    parser = syn2mas_parser()
    ns = parser.parse_intermixed_args(args)
    # clap: --dry-run is an option of the `migrate` subcommand, so only after it
    subcommand_at = next((i for i, arg in enumerate(args) if arg in ("check", "migrate")), len(args))
    if "--dry-run" in args[:subcommand_at] or (ns.dry_run and ns.subcommand != "migrate"):
        parser.error("unexpected argument '--dry-run' found")
    return ns


# ------------------------------------------------------------------ handlers


def config_check(config: MasConfig, ns: argparse.Namespace) -> int:
    """``config check``: schema and runtime validation, no files or database read."""
    config_mod.check(config)
    LOG_CONFIG.info("Configuration file looks good")
    return 0


def database_migrate(config: MasConfig, ns: argparse.Namespace) -> int:
    """``database migrate``: load the upstream schema when ``users`` is missing."""
    config_mod.check(config, schema=False, sections=("database",))
    if db.ensure_schema(config):
        LOG_DATABASE.info("Applied the MAS database schema")
    else:
        LOG_DATABASE.info("Database schema is up to date")
    return 0


def run_server(config: MasConfig, ns: argparse.Namespace) -> int:
    """``server``: see :func:`mas_double.server.serve`."""
    from mas_double import server  # local import: werkzeug only for the server

    return server.serve(config, no_migrate=ns.no_migrate, no_worker=ns.no_worker, no_sync=ns.no_sync)


def run_doctor(config: MasConfig, ns: argparse.Namespace) -> int:
    """``doctor``: see :func:`mas_double.doctor.run`."""
    from mas_double import doctor

    return doctor.run(config)


def run_syn2mas(config: MasConfig, ns: argparse.Namespace) -> int:
    """``syn2mas``: argument checks here, the work in ``mas_double.syn2mas.run``."""
    if not ns.synapse_config:
        LOG_SYN2MAS.error("Please specify the path to the Synapse configuration file(s).")
        return 1
    try:
        from mas_double import syn2mas
    except ImportError as exc:
        raise ConfigError(f"syn2mas is not available in the MAS double: {exc}") from exc
    return int(syn2mas.run(config, ns))


# ---------------------------------------------------------------------- main


def _split_syn2mas(argv: list[str]) -> tuple[list[str], list[str]] | None:
    """Split ``[global options] syn2mas <args>`` into its two parts (None for other commands).

    argparse cannot hand a remainder that starts with an option to a
    subcommand, so ``syn2mas`` arguments are cut off before parsing.
    """
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg in ("-c", "--config"):
            index += 2
        elif arg.startswith("--config=") or (arg.startswith("-c") and len(arg) > 2):
            index += 1
        else:
            break
    if index < len(argv) and argv[index] == "syn2mas":
        return argv[:index], argv[index + 1 :]
    return None


def main(argv: list[str] | None = None) -> int:
    """Run ``mas-cli`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    syn2mas_split = _split_syn2mas(argv)
    if syn2mas_split is not None:
        ns = parse_syn2mas(syn2mas_split[1])
        ns.config = parser.parse_args(syn2mas_split[0]).config
        handler = run_syn2mas
    else:
        ns = parser.parse_args(argv)
        if ns.command is None:  # no subcommand: `server`, as upstream
            ns = argparse.Namespace(
                config=ns.config, config_late=None, no_migrate=False, no_worker=False, no_sync=False
            )
            handler = run_server
        else:
            handler = ns.handler
    paths = (ns.config or []) + (getattr(ns, "config_late", None) or [])
    faults.maybe_slow()
    try:
        config = config_mod.load_config(paths)
        config_mod.telemetry_check(config)  # main.rs: before any command
        return handler(config, ns)
    except (ConfigError, HomeserverError, PasswordError) as exc:
        sys.stderr.write(f"Error: {exc}\n")
        return 1
    except Panic as exc:
        sys.stderr.write(
            f"\nthread 'main' panicked at {exc.where}:\n{exc}\n"
            "note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n"
        )
        return 101


if __name__ == "__main__":
    sys.exit(main())
