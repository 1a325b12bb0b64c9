"""
Doctor of the ``mas`` formula: ``mas-cli doctor`` run with the deployed configuration, parsed into a result automation can gate on.

Upstream doctor logs one line per check on stderr, marked ✅ (ok), ⚠️
(warning) or ❌ (error), with quirks (an error line without emoji,
``❌Can't reach ...`` without a space, messages spanning several lines).
Its output is scrubbed of every secret the minion knows (``mas_secret.scrub``:
upstream prints ``matrix.secret`` when its ``/_synapse/mas`` probe fails)
before it is parsed, returned or logged.
"""

import os
import re

from salt.exceptions import CommandExecutionError

__virtualname__ = "mas_doctor"

_TRACE = re.compile(r"^(\d{4}-\d\d-\d\dT\S+)\s+(TRACE|DEBUG|INFO|WARN|ERROR)\s+(\S+)\s?(.*)$")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def __virtual__():
    return __virtualname__


def _doctor_entries(stderr):
    """Tracing lines of ``mas-cli`` as ``[{level, target, message}]``
    (continuation lines belong to the entry above them)."""
    entries = []
    for raw in _ANSI.sub("", stderr).splitlines():
        match = _TRACE.match(raw)
        if match:
            entries.append({"level": match.group(2), "target": match.group(3), "message": match.group(4)})
        elif entries:
            entries[-1]["message"] += "\n" + raw
        elif raw.strip():
            entries.append({"level": "ERROR" if raw.startswith("Error") else "INFO", "target": "", "message": raw})
    return entries


def _classify(entry):
    message = entry["message"].lstrip()
    if message.startswith("✅"):
        return "ok"
    if message.startswith("⚠"):
        return "warning"
    if message.startswith("❌") or entry["level"] == "ERROR":
        return "error"
    if entry["level"] == "WARN":
        return "warning"
    return "info"


def run(strict=False):
    """
    Run ``mas-cli doctor`` with the deployed configuration and return a result
    automation can gate on: ``{"result", "exit_code", "ok": [...], "warnings":
    [...], "errors": [...]}``. ``result`` is false when doctor reports an
    error (or a warning, with ``strict``), and ``salt-call`` then exits
    non-zero. Secrets are removed from every message (upstream's doctor
    prints ``matrix.secret`` when the ``/_synapse/mas`` probe fails).

    strict
        Count warnings as failures too.

    CLI Example:

    .. code-block:: bash

        salt-call mas_doctor.run
        salt-call mas_doctor.run strict=True
    """
    mas = __salt__["mas.mapdata"]()
    cli = mas["paths"]["mas_cli"]
    if not os.path.isfile(cli):
        raise CommandExecutionError(f"{cli} does not exist: apply the mas state first")
    problem = __salt__["mas.runtime_problem"]()
    if problem:
        raise CommandExecutionError(problem)
    res = __salt__["cmd.run_all"](
        [cli, "doctor"],
        python_shell=False,
        output_loglevel="quiet",
        ignore_retcode=True,
        env={"RUST_LOG": "info", "NO_COLOR": "1"},
    )
    report = {"result": True, "exit_code": res["retcode"], "ok": [], "warnings": [], "errors": []}
    stderr = __salt__["mas_secret.scrub"](res["stderr"], secrets_dir=mas["paths"]["secrets_dir"])
    for entry in _doctor_entries(stderr):
        kind = _classify(entry)
        if kind != "info":
            report[kind + "s" if kind != "ok" else "ok"].append(entry["message"])
    if res["retcode"] != 0 and not report["errors"]:
        raw = stderr or __salt__["mas_secret.scrub"](res["stdout"], secrets_dir=mas["paths"]["secrets_dir"])
        report["errors"].append(raw.strip()[-2000:])
    report["result"] = res["retcode"] == 0 and not report["errors"] and not (strict and report["warnings"])
    if not report["result"]:
        __context__["retcode"] = 1
    return report
