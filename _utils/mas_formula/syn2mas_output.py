"""What ``mas-cli syn2mas`` said and how the formula tells it: output parsed into errors and warnings, exit codes and signals in words, the run's steps, secrets scrubbed, and the result every syn2mas function returns.

``mas-cli`` logs to stderr; its errors and warnings come under ``===== Errors
=====`` / ``===== Warnings =====`` headings (check) or as ``Error:`` lines
(migrate). :class:`Steps` times each step of a run and names it in the state
comment.
"""

import itertools
import logging
import re
import signal
import time

from mas_formula import secretfiles, syn2mas_marker

#: mas-cli syn2mas's exit codes: done, a fatal error, errors found (check), warnings only (check)
EXIT_OK, EXIT_FATAL, EXIT_ERRORS, EXIT_WARNINGS = 0, 1, 10, 11

log = logging.getLogger(__name__)


HEADING = re.compile(r"^=+\s*(Errors|Warnings)\s*=+$")


BULLET = "\u2022"


SUMMARY_LINES = 40


SUMMARY_CHARS = 6000


def scrub(text, secrets):
    """``text`` without ANSI colours, secrets or passwords in URLs (``mas_secret.scrub``)."""
    return secretfiles.scrub(text, secrets)


def parse_output(stdout, stderr):
    """Split syn2mas output into ``(errors, warnings, fatal)``.

    ``errors``/``warnings`` are the ``• `` bullets under the ``===== Errors
    =====`` / ``===== Warnings =====`` headings (a bullet may span lines up to
    a blank line); ``fatal`` is the ``Error: ...`` report of an unhandled
    error with its ``Caused by:`` lines (without the ``Stack backtrace:`` that
    ``RUST_BACKTRACE`` adds), or None.
    """
    sections = {"Errors": [], "Warnings": []}
    current, bullet, fatal = None, None, None
    lines = (stderr or "").splitlines() + (stdout or "").splitlines()
    for index, raw in enumerate(lines):
        line = raw.strip()
        heading = HEADING.match(line)
        if heading:
            current, bullet = heading.group(1), None
            continue
        if line.startswith("Error: ") and fatal is None:
            report = itertools.takewhile(lambda rest: rest.strip() != "Stack backtrace:", lines[index:])
            fatal = "\n".join(rest.rstrip() for rest in report if rest.strip()).strip()
            current = bullet = None
            continue
        if current is None or fatal is not None:
            continue
        if line.startswith(BULLET):
            bullet = line[len(BULLET) :].strip()
            sections[current].append(bullet)
        elif not line or re.match(r"^\d{4}-\d\d-\d\dT", line):
            bullet = None
            if line:
                current = None  # a log line ends the section
        elif bullet is not None:
            bullet = f"{bullet} {line}"
            sections[current][-1] = bullet
    return sections["Errors"], sections["Warnings"], fatal


def summary_of(text):
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    summary = "\n".join(lines[-SUMMARY_LINES:])
    return summary[-SUMMARY_CHARS:]


#: A line mas-cli reports an error on: a log line at ERROR level, or an ``Error:`` report.
ERROR_LINE = re.compile(r"^(?:\d{4}-\d\d-\d\dT\S+\s+ERROR\s|Error:|error:)")


def last_error_line(text):
    """The last line of ``text`` at ERROR level (never an INFO/WARN line), or None."""
    return next((line.strip() for line in reversed(text.splitlines()) if ERROR_LINE.match(line.strip())), None)


def signal_name(code):
    """The signal that killed mas-cli (a negative exit code; 128 + N from a shell or a container runtime), or None."""
    if isinstance(code, int) and code < 0:
        return -code
    return code - 128 if isinstance(code, int) and 128 < code < 160 else None


def ended_as(code):
    """How mas-cli ended: ``mas-cli exited with 1``, ``mas-cli was killed by signal 9 (SIGKILL)``."""
    number = signal_name(code)
    if number is None:
        return f"mas-cli exited with {code}"
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = "unknown signal"
    return f"mas-cli was killed by signal {number} ({name}{'' if code < 0 else f'; exit code {code}'})"


def displayed(argv, secrets):
    return scrub(" ".join(argv), secrets)


def result(ok, phase, comment, exit_code=None, errors=None, warnings=None, **extra):
    """What every ``mas_syn2mas`` function returns: ``{"result", "phase", "exit_code", "errors", "warnings",
    "comment", ...}`` (the module makes ``salt-call`` exit 1 when ``result`` is False)."""
    ret = {
        "result": ok,
        "phase": phase,
        "exit_code": exit_code,
        "errors": list(errors or []),
        "warnings": list(warnings or []),
        "comment": comment,
    }
    ret.update(extra)
    return ret


def hint_for(errors, phase):
    """An operator hint for well-known failures."""
    text = "\n".join(errors)
    if "MAS database is not empty" in text and phase not in syn2mas_marker.DONE_PHASES:
        return (
            "MAS's database already holds users (created in MAS, or syn2mas ran outside the formula). syn2mas "
            "needs an empty MAS database: drop and recreate it (mas:database), then run again."
        )
    if "another syn2mas instance is already running" in text:
        return "Another syn2mas holds MAS's database lock: wait for it to finish."
    return None


class Steps(list):
    """The steps of a real run with their durations: logged at info level, listed in the comment and marker."""

    def run(self, name, func, *args, ok=None, **kwargs):
        """Run ``func`` as step ``name``; ``ok(value)`` tells whether it succeeded (default: no exception)."""
        started = time.monotonic()
        try:
            value = func(*args, **kwargs)
        except Exception:
            self._done(name, started, "failed")
            raise
        self._done(name, started, "ok" if ok is None or ok(value) else "failed")
        return value

    def skip(self, name, why):
        self.append({"step": name, "result": "skipped", "seconds": 0.0, "why": why})
        log.info("mas_syn2mas: step %s skipped: %s", name, why)

    def _done(self, name, started, result):
        seconds = round(time.monotonic() - started, 3)
        self.append({"step": name, "result": result, "seconds": seconds})
        log.info("mas_syn2mas: step %s %s in %.3f s", name, result, seconds)

    def text(self):
        return "Steps: " + "; ".join(
            f"{s['step']} {s['result']}" + (f" ({s['seconds']:.1f} s)" if s["result"] != "skipped" else "")
            for s in self
        )


def merge_check(pre, run, accept_warnings, phase):
    """Preflight and upstream's ``check`` in one shape: ``(result, errors, warnings, comment)``."""
    errors = list(pre["errors"]) + [e for e in run["errors"] if e not in pre["errors"]] if run else list(pre["errors"])
    warnings = list(pre["warnings"]) + [w for w in (run or {}).get("warnings", []) if w not in pre["warnings"]]
    code = (run or {}).get("exit_code")
    ok = not errors and code in (EXIT_OK, EXIT_WARNINGS, None)
    if ok and warnings and not accept_warnings:
        ok = False
        errors.append(
            f"{len(warnings)} warning(s): read them, then accept them with accept_warnings=True "
            "(pillar mas:syn2mas:accept_warnings: true)"
        )
    hint = hint_for(errors, phase)
    if hint:
        errors.append(hint)
    comment = {
        EXIT_OK: "syn2mas check passed",
        EXIT_WARNINGS: "syn2mas check passed with warnings",
        EXIT_ERRORS: "syn2mas check found blocking errors",
        None: "syn2mas preflight found blocking errors",
    }.get(code, f"syn2mas check failed ({ended_as(code)})")
    if pre["errors"] and code in (EXIT_OK, EXIT_WARNINGS):
        comment = "syn2mas check passed upstream but the preflight found blocking errors"
    return ok, errors, warnings, comment
