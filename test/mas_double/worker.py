"""The double's job worker (runs inside ``server`` unless ``--no-worker``).

MAS queues work for Synapse in ``queue_jobs`` and its worker executes it.  The
double's worker polls that table and runs the jobs it knows:

* ``provision-user`` ``{"user_id", "set_display_name"?}``: ``provision_user``
  in Synapse with the user's emails and lock state;
* ``deactivate-user`` ``{"user_id", "hs_erase"}``: sets ``deactivated_at``,
  finishes compat sessions, ``delete_user`` in Synapse;
* ``reactivate-user`` ``{"user_id"}``: ``reactivate_user`` in Synapse, clears
  ``deactivated_at`` and ``locked_at``.

A job whose homeserver call fails stays ``available`` and is retried (its
``attempt`` counter grows) up to :data:`MAX_ATTEMPTS`, then it is ``failed``.
Other queues are left alone.
"""

from __future__ import annotations

import threading

from mas_double import db, ulid
from mas_double.config import ConfigError
from mas_double.homeserver import HomeserverConnection, HomeserverError
from mas_double.state import ServerState
from mas_double.tracing import Logger

LOG = Logger("mas_tasks")
QUEUES = ("provision-user", "deactivate-user", "reactivate-user")
POLL_SECONDS = 0.25
MAX_ATTEMPTS = 40


def run_job(conn, homeserver: HomeserverConnection, queue: str, payload: dict) -> None:
    """Execute one job inside the caller's transaction (raises HomeserverError on failure)."""
    user = db.lookup_user(conn, ulid.to_uuid(payload["user_id"]))
    if user is None:
        return
    if queue == "provision-user":
        homeserver.provision_user(
            user.username,
            db.emails_of(conn, user),
            display_name=payload.get("set_display_name"),
            locked=user.locked_at is not None,
        )
    elif queue == "deactivate-user":
        db.deactivate_user(conn, user)
        homeserver.delete_user(user.username, erase=bool(payload.get("hs_erase", False)))
    elif queue == "reactivate-user":
        homeserver.reactivate_user(user.username)
        db.reactivate_user(conn, user)


def process_pending(state: ServerState) -> int:
    """Run every available job of the known queues once; returns how many completed."""
    done = 0
    with state.config.connect() as conn:
        jobs = conn.execute(
            "SELECT queue_job_id, queue_name, payload, attempt FROM queue_jobs"
            " WHERE status = 'available' AND queue_name = ANY(%s) ORDER BY queue_job_id",
            (list(QUEUES),),
        ).fetchall()
        conn.commit()
        for job_id, queue, payload, attempt in jobs:
            try:
                run_job(conn, state.homeserver, queue, payload)
            except HomeserverError as exc:
                conn.rollback()
                status = "failed" if attempt + 1 >= MAX_ATTEMPTS else "available"
                conn.execute(
                    "UPDATE queue_jobs SET attempt = attempt + 1, status = %s, failed_reason = %s,"
                    " failed_at = CASE WHEN %s = 'failed' THEN now() END WHERE queue_job_id = %s",
                    (status, str(exc)[:500], status, job_id),
                )
                conn.commit()
                continue
            conn.execute(
                "UPDATE queue_jobs SET status = 'completed', started_at = now(), completed_at = now()"
                " WHERE queue_job_id = %s",
                (job_id,),
            )
            conn.commit()
            LOG.info("Job completed", **{"job.queue.name": queue, "job.id": ulid.from_uuid(job_id)})
            done += 1
    return done


class Worker(threading.Thread):
    """Background thread polling ``queue_jobs`` until :meth:`stop`."""

    def __init__(self, state: ServerState):
        super().__init__(name="mas-double-worker", daemon=True)
        self.state = state
        self._stop_event = threading.Event()

    def run(self) -> None:
        """Poll until stopped; database hiccups are logged and retried."""
        while not self._stop_event.wait(POLL_SECONDS):
            try:
                process_pending(self.state)
            except (ConfigError, OSError) as exc:
                LOG.warn(f"Worker could not poll the job queue: {str(exc).splitlines()[0]}")
            except Exception as exc:
                LOG.error(f"Worker error: {exc}")

    def stop(self) -> None:
        """Ask the thread to finish and wait for it."""
        self._stop_event.set()
        self.join(timeout=5)
