"""Run the test suite the way CI does: against the real MAS, then the double's own tests against the double.

``scripts/test`` ends here (standard library only). With upstream's release
tarball beside the project (``scripts/mas_release.py``), it is verified and
unpacked once, and pytest runs twice:

1. every test, with ``MAS_REAL_CLI``/``MAS_REAL_SHARE`` pointing at the real
   ``mas-cli`` and its ``share/``: every integration test that talks to MAS talks
   to the real one; the tests of the double's fault switches and test-only knobs
   (marker ``double_only``) are left to pass 2;
2. the tests of the MAS double itself, against the double: its contracts with
   MAS (marker ``double``, the same tests pass 1 ran against the real MAS) and its
   fault switches (marker ``double_only``).

Both passes run their test files on ``$MAS_TEST_WORKERS`` workers (pytest-xdist, default 2, ``0``: one
process; a test file stays on one worker, so its module fixtures are built once): most of a test's time is
spent waiting on Salt, Synapse, MAS or PostgreSQL, which the other worker fills. Without the tarball only pass 1 runs, with the double as MAS (under
``CI=true`` that is an error naming the missing file). ``MAS_REAL_CLI`` and
``MAS_REAL_SHARE`` already set choose the real MAS to run instead. Arguments go to
both passes; a ``-m`` expression narrows pass 2 too (``-m "not integration"``:
pass 2 selects nothing, which is no failure).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mas_release import main as release_main
from mas_release import release_dir, unpacked

REPO_ROOT = Path(__file__).resolve().parents[1]
PYTEST = REPO_ROOT / ".venv" / "bin" / "pytest"
DOUBLE_TESTS = "double or double_only"
NO_TESTS = 5  # pytest's exit status when nothing was selected


def _pass_two_args(args: list[str]) -> list[str]:
    """``args`` with their ``-m`` expression (if any) and-ed with :data:`DOUBLE_TESTS`."""
    out, marks, rest = [], [], list(args)
    while rest:
        arg = rest.pop(0)
        if arg == "-m" and rest:
            marks.append(rest.pop(0))
        elif arg.startswith("-m") and len(arg) > 2 and not arg.startswith("--"):
            marks.append(arg[2:].lstrip("="))
        else:
            out.append(arg)
    expression = " and ".join(f"({mark})" for mark in [*marks, DOUBLE_TESTS])
    return [*out, "-m", expression]


def _workers(args: list[str]) -> list[str]:
    """pytest-xdist's arguments: ``$MAS_TEST_WORKERS`` workers (default 2), unless the arguments choose already."""
    if any(arg == "-n" or arg.startswith(("-n", "--numprocesses", "-p no:xdist")) for arg in args):
        return []
    workers = os.environ.get("MAS_TEST_WORKERS", "2")
    if not workers.isdigit() or workers == "0":
        return []
    return ["-n", workers, "--dist", "loadfile"]


def _real_mas(env: dict) -> bool:
    """Point ``env`` at the real MAS when one is given or beside the project; False when there is none."""
    if env.get("MAS_REAL_CLI") or env.get("MAS_REAL_SHARE"):
        return True
    if not (release_dir() / "mas-cli-x86_64-linux.tar.gz").is_file():
        if release_main() != 0:  # says why (and fails under CI=true)
            sys.exit(1)
        return False
    try:
        release = unpacked()
    except Exception as exc:  # a ReleaseError or an I/O error: say it and stop
        print(f"scripts/test: {exc}", file=sys.stderr)
        sys.exit(1)
    env["MAS_REAL_CLI"], env["MAS_REAL_SHARE"] = str(release.cli), str(release.share)
    return True


def main(args: list[str]) -> int:
    env = dict(os.environ)
    args = [*_workers(args), *args]
    if not _real_mas(env):
        return subprocess.call([str(PYTEST), *args], env=env)
    print(f"scripts/test: pass 1 of 2, the suite against the real MAS ({env['MAS_REAL_CLI']})", flush=True)
    first = subprocess.call([str(PYTEST), *args], env=env)
    double = {k: v for k, v in env.items() if k not in ("MAS_REAL_CLI", "MAS_REAL_SHARE")}
    print("scripts/test: pass 2 of 2, the MAS double's own tests against the double", flush=True)
    second = subprocess.call([str(PYTEST), *_pass_two_args(args)], env=double)
    if second == NO_TESTS:
        print("scripts/test: pass 2 selected no test", flush=True)
        second = 0 if first != NO_TESTS else NO_TESTS
    elif first == NO_TESTS:  # e.g. -m double_only: every test selected belongs to pass 2
        first = 0
    return first or second


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
