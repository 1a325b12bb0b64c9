"""A stand-in ``service`` command on a test minion's ``PATH`` (systemd is not PID 1 here).

Salt's ``service.start``/``stop``/``restart``/``status`` on Debian without
systemd run ``service <name> <action>``; this program answers them for the
services a test registers, starting and stopping their real processes with
:mod:`salt_harness.harness_service` (a detached process from ``argv``, its pid
in ``pidfile``, ``start`` waiting until ``url`` answers, every call appended
to ``events``, the actions listed in ``fail`` failing). So the formula's own
calls, through Salt's own service module, really restart the test's Synapse.

:func:`install` writes the ``service`` program into a directory and returns
the environment a minion runs with (``SaltMinion(..., env=...)``): that
directory first on ``PATH`` and ``MAS_TEST_SERVICES``, the JSON file mapping
each registered name to its spec file. Unknown names answer like Debian's
``service`` does (exit 1, "unrecognized service").
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

_HARNESS_SERVICE = Path(__file__).resolve().parents[1] / "integration" / "salt_harness" / "harness_service.py"
_TEST_DIR = Path(__file__).resolve().parents[1]


def _control():
    spec = importlib.util.spec_from_file_location("harness_service", _HARNESS_SERVICE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.control


def install(bin_dir: Path, services: dict[str, Path]) -> dict[str, str]:
    """Write ``bin_dir/service`` serving ``services`` (name -> spec file); return the minion's environment."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    registry = bin_dir / "services.json"
    registry.write_text(json.dumps({name: str(path) for name, path in services.items()}))
    program = bin_dir / "service"
    program.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        f"sys.path.insert(0, {str(_TEST_DIR)!r})\n"
        "from harness.service_standin import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    program.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "MAS_TEST_SERVICES": str(registry)}


def main(argv: list[str]) -> int:
    """``service <name> <action>``: 0 on success; ``status``: 0 running, 3 stopped (LSB)."""
    if len(argv) < 2:
        print("Usage: service < option > | --status-all | [ service_name [ command | --full-restart ] ]")
        return 1
    name, action = argv[0], argv[1]
    with open(os.environ["MAS_TEST_SERVICES"], encoding="utf-8") as handle:
        services = json.load(handle)
    if name not in services:
        print(f"{name}: unrecognized service", file=sys.stderr)
        return 1
    with open(services[name], encoding="utf-8") as handle:
        spec = json.load(handle)
    control = _control()
    if action == "status":
        return 0 if control(spec, "status", name) else 3
    if action in ("force-reload", "reload"):
        action = "restart"
    if action not in ("start", "stop", "restart"):
        print(f"service {name}: unsupported action {action}", file=sys.stderr)
        return 1
    return 0 if control(spec, action, name) else 1
