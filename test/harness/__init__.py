"""Integration test harness for mas-formula.

Small, self-contained wrappers that start real services on loopback ports for
the duration of a pytest session:

* :mod:`harness.postgres` -- a throw-away PostgreSQL cluster (``PostgresCluster``),
* :mod:`harness.synapse` -- a real Synapse homeserver (``SynapseServer``),
* :mod:`harness.nginx` -- an nginx reverse proxy (``NginxServer``),
* :mod:`harness.fixtures` -- the pytest fixtures built on top of them,
* :mod:`harness.util` -- free ports, HTTP polling and binary lookup.

Import it as ``harness.*`` (``test/`` is on ``pythonpath`` and is not a package).
"""
