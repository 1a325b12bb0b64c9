"""The syn2mas phase marker: where a migration stands on this minion (``<base_path>/formula/syn2mas.json``), its lock, and what the operator does next in each phase.

The marker is root-only JSON written with the formula's one atomic writer; the
phases are ``legacy_auth``, ``migrating``, ``migrated_unverified``,
``migrated`` (an earlier formula's), ``verified``, ``delegated`` and
``rolled_back``. :func:`exclusive` holds the lock while a migration (or a
change of phase) runs, so two runs never migrate at once.
"""

import contextlib
import datetime
import fcntl
import json
import logging
import os

import salt.utils.files
from salt.exceptions import CommandExecutionError

from mas_formula import secretfiles

log = logging.getLogger(__name__)


MARKER_VERSION = 1


PHASES = ("legacy_auth", "migrating", "migrated_unverified", "migrated", "verified", "delegated", "rolled_back")


#: Phases after which Synapse may delegate to MAS (``migrated``: a run recorded before verification existed).
MIGRATED_PHASES = ("migrated", "verified")


#: Phases in which a (second) migration is refused by the formula.
DONE_PHASES = ("migrated_unverified", "migrated", "verified", "delegated", "rolled_back")


ROLLBACK = (
    "To migrate again: set mas:migration_in_progress: true and apply `mas` (Synapse becomes authoritative again), "
    "drop and recreate MAS's database, run `salt-call mas_syn2mas.reset confirm=True`, then migrate. Sessions "
    "created in MAS since the migration are lost."
)


def utc_now():
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def marker_path(mas):
    return mas["paths"]["syn2mas_marker"]


def read_marker(mas):
    """The marker's content, or None when there is none (phase legacy_auth)."""
    path = marker_path(mas)
    if not os.path.exists(path):
        return None
    try:
        with salt.utils.files.fopen(path, "r") as handle:
            marker = json.load(handle)
    except (OSError, ValueError) as exc:
        raise CommandExecutionError(
            f"the syn2mas phase marker {path} cannot be read ({exc}); repair it or run "
            "`salt-call mas_syn2mas.reset confirm=True` after checking MAS's database"
        ) from exc
    if not isinstance(marker, dict) or marker.get("phase") not in PHASES:
        raise CommandExecutionError(
            f"the syn2mas phase marker {path} holds no known phase ({', '.join(PHASES)}); repair it or run "
            "`salt-call mas_syn2mas.reset confirm=True` after checking MAS's database"
        )
    return marker


def phase_of(marker):
    return marker["phase"] if marker else "legacy_auth"


def write_marker(mas, marker):
    """Write the marker atomically (``mas_secret.atomic_write``), owned by root (the minion), mode 0600."""
    directory = mas["paths"]["state_dir"]
    if not os.path.isdir(directory):
        raise CommandExecutionError(f"the formula's state directory {directory} does not exist: apply `mas` first")
    secretfiles.atomic_write(marker_path(mas), json.dumps(marker, indent=2, sort_keys=True) + "\n")


def set_phase(mas, marker, phase, **fields):
    """Record ``phase`` (and ``fields``) in a copy of ``marker``; return it.
    ``history`` lists the phase transitions (the first write is one too)."""
    previous = phase_of(marker)
    now = utc_now()
    history = list((marker or {}).get("history", []))
    if marker is None or phase != previous:
        history.append({"phase": phase, "at": now, "from": previous})
    marker = dict(marker or {})
    marker.update(fields, phase=phase, updated_at=now, version=MARKER_VERSION, history=history)
    write_marker(mas, marker)
    log.info("mas_syn2mas: phase %s recorded in %s", phase, marker_path(mas))
    return marker


@contextlib.contextmanager
def exclusive(mas):
    """One formula-driven syn2mas run (or reset) at a time on this minion."""
    directory = mas["paths"]["state_dir"]
    if not os.path.isdir(directory):
        raise CommandExecutionError(f"the formula's state directory {directory} does not exist: apply `mas` first")
    fd = os.open(mas["paths"]["syn2mas_lock"], os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise CommandExecutionError("another syn2mas run of the formula is in progress on this minion") from exc
        yield
    finally:
        os.close(fd)


def dropin(mas):
    return mas["paths"]["synapse_dropin"]


def effective_phase(mas, marker):
    """The recorded phase; without a marker ``delegated`` when Synapse's drop-in is on disk, else ``legacy_auth``."""
    if marker is not None:
        return marker["phase"]
    return "delegated" if os.path.exists(dropin(mas)) else "legacy_auth"


def already(mas, marker):
    """Why a (second) migration is refused in a done phase, with the way back."""
    phase = effective_phase(mas, marker)
    if phase == "delegated" and (marker is None or marker.get("migration") == "none"):
        return (
            "no migration is needed: Synapse already delegates to MAS "
            f"({'no syn2mas migration was ever recorded' if marker is None else 'none was needed'})"
        )
    if phase == "rolled_back":
        return f"rolled back after a migration (phase rolled_back). {ROLLBACK}"
    done = (marker or {}).get("finished_at") or (marker or {}).get("updated_at")
    return f"already migrated (phase {phase} since {done}). {ROLLBACK}"


def next_step(mas, marker, phase):
    """What the operator does next in ``phase`` (status and the state comments)."""
    if phase == "delegated" and marker is None:
        return (
            f"nothing: Synapse already delegates to MAS (its drop-in {dropin(mas)} is in place) and no "
            "syn2mas migration was ever recorded on this minion"
        )
    if phase == "delegated" and marker.get("migration") == "none":
        return "nothing: Synapse delegates to MAS; no migration was needed (Synapse had no user to migrate)"
    if phase == "rolled_back" and (marker or {}).get("migration") == "none":
        return "nothing to migrate: Synapse authenticates again (MAS was authoritative without a migration)"
    return {
        "legacy_auth": "check (mas_syn2mas.check), dry run, then migrate (state.apply mas.syn2mas)",
        "migrating": "the last migration did not finish: fix the errors and migrate again (it resumes safely)",
        "migrated_unverified": (
            "the verification found differences (`salt-call mas_syn2mas.verify`): fix MAS, then "
            "`salt-call mas_syn2mas.verify record=True`; or roll back"
        ),
        "migrated": (
            "set mas:migration_in_progress: false and apply `mas` (Synapse delegates to MAS, MAS starts); "
            "`salt-call mas_syn2mas.verify` first compares MAS with Synapse"
        ),
        "verified": "set mas:migration_in_progress: false and apply `mas` (Synapse delegates to MAS, MAS starts)",
        "delegated": "nothing: Synapse delegates to MAS",
        "rolled_back": (
            "Synapse authenticates again. To migrate again: drop and recreate MAS's database, "
            "`salt-call mas_syn2mas.reset confirm=True`, then `salt-call state.apply mas.syn2mas`"
        ),
    }[phase]
