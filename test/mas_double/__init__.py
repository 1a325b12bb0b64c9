"""A test double of Matrix Authentication Service (MAS) 1.23 for the formula's tests.

The real MAS cannot be installed here, so this package provides a ``mas-cli``
executable (:data:`MAS_CLI`, ``test/mas_double/bin/mas-cli``) that the formula
uses as its ``mas:binary`` with runtime ``binary``.  It is backed by a *real*
MAS database (the upstream ``schema.sql`` loaded into PostgreSQL) and answers
with the arguments, outputs (stdout vs stderr) and exit codes of the real
``mas-cli`` for the surface the formula uses:

* ``config check``, ``database migrate``, ``server``, ``doctor``,
* ``manage register-user|add-email|verify-email|set-password|promote-admin|
  demote-admin|list-admin-users|lock-user|unlock-user|issue-compatibility-token``,
* ``syn2mas ... (check | migrate [--dry-run])`` (argument handling here, the
  work in ``mas_double.syn2mas.run(config, ns)``, written separately).

Modules: :mod:`~mas_double.cli` (entry point), :mod:`~mas_double.config`
(loading, validation, secret files), :mod:`~mas_double.db` (tables),
:mod:`~mas_double.passwords`, :mod:`~mas_double.homeserver` (Synapse's
``/_synapse/mas`` API), :mod:`~mas_double.manage`, :mod:`~mas_double.server`
with :mod:`~mas_double.oauth`, :mod:`~mas_double.compat`,
:mod:`~mas_double.admin_api` and :mod:`~mas_double.worker`,
:mod:`~mas_double.doctor`, :mod:`~mas_double.contract` (OpenAPI validation
of admin API responses for tests) and :mod:`~mas_double.runner` (starting the
server from tests: ``run_server``, ``run_cli``).

The ``bin/mas-cli`` script runs ``$MAS_DOUBLE_PYTHON`` (default: the
repository's ``.venv/bin/python`` when present, else ``python3``) with this
package's parent directory on ``PYTHONPATH``.

Environment variables:

``MAS_DOUBLE_FAULT``
    Comma-separated faults to inject:

    * ``refuse``: the database is unreachable: every command that needs it
      (and ``server``, which then never binds) exits 1 with
      ``Error: could not connect to the database``;
    * ``http500``: the server answers every HTTP request with 500;
    * ``migrate-exit1``: ``syn2mas migrate`` fails half-way with exit 1
      (implemented by ``mas_double.syn2mas``);
    * ``slow``: every command and every HTTP response is delayed by
      ``MAS_DOUBLE_SLOW_SECONDS`` (default 2).
    * ``no-personal-sessions``: the admin API has no ``/personal-sessions``
      routes (404, as a MAS before personal sessions).
``MAS_DOUBLE_PYTHON``
    The Python interpreter ``bin/mas-cli`` runs.
``MAS_DOUBLE_UPSTREAM_DIR``
    Where ``mas/config.schema.json``, ``mas/schema.sql`` and
    ``mas/admin-api-spec.json`` are (default ``<repo>/../shared/upstream``).
``MAS_DOUBLE_WELL_KNOWN_BASE``
    Base URL doctor uses instead of ``https://<matrix.homeserver>`` for the
    client well-known probe.

Known simplifications (documented where they live): the password complexity
check is a stand-in for zxcvbn (:mod:`~mas_double.passwords`); argon2id with a
pepper is refused; OAuth client-credentials tokens live in memory; static
clients and upstream providers are not synced to the database; there is no
browser UI, GraphQL or upstream OAuth login.
"""

from pathlib import Path

#: The ``mas-cli`` executable of the double.
MAS_CLI = Path(__file__).resolve().parent / "bin" / "mas-cli"

__all__ = ["MAS_CLI", "MasServer", "run_cli", "run_server"]


def __getattr__(name: str):
    """Lazily expose the test-side helpers of :mod:`mas_double.runner`.

    Kept lazy so that ``python -m mas_double.cli`` does not import them.
    """
    if name in ("MasServer", "run_cli", "run_server"):
        from mas_double import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'mas_double' has no attribute {name!r}")
