"""Unit tests of ``_modules/mas_doctor.py``: upstream doctor's output parsed (markers, quirks) and scrubbed.

``cmd.run_all`` answers with recorded ``mas-cli doctor`` output; the parser,
the scrubber (``mas_secret.scrub``) and the map are the formula's own.
"""

import pytest

from formula_modules import MODULES, dunders

mas_doctor = MODULES["mas_doctor"]


@pytest.fixture
def pillar():
    return {}


@pytest.fixture
def configure_loader_modules(pillar):
    return dunders(pillar)


DOCTOR_STDERR = """\x1b[2m2026-11-26T10:00:00.000001Z\x1b[0m \x1b[32m INFO\x1b[0m mas_cli::commands::doctor:40 💡 Running diagnostics, make sure that both MAS and Synapse are running.
2026-11-26T10:00:00.000002Z  WARN mas_cli::commands::doctor:60 ⚠️ The issuer in the config (`http.issuer`/`http.public_base`) is not an HTTPS URL.
This means some clients will refuse to use it.
2026-11-26T10:00:00.000003Z  INFO mas_cli::commands::doctor:80 ✅ Homeserver is reachable at "http://synapse:8008/_matrix/client/versions"
2026-11-26T10:00:00.000004Z ERROR mas_cli::commands::doctor:90 ❌Can't reach the homeserver admin API at "http://synapse:8008/_synapse/mas/is_localpart_available".
matrix:
  kind: synapse
  homeserver: example.com
  secret: "THE-SHARED-SECRET"
2026-11-26T10:00:00.000005Z ERROR mas_cli::commands::doctor:99 The legacy login API at "https://matrix.example.com/_matrix/client/v3/login" replied with 404 Not Found.
"""


def test_doctor_parsing_markers_quirks_and_scrubbing(tmp_path, pillar):
    pillar["mas"] = {
        "enabled": True,
        "server_name": "example.com",
        "base_path": str(tmp_path),
        "secrets": {"homeserver_secret": "THE-SHARED-SECRET"},
    }
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "mas-cli").write_text("#!/bin/sh\n")
    (tmp_path / "config" / "secrets").mkdir(parents=True)
    (tmp_path / "config" / "secrets" / "homeserver_secret").write_text("THE-SHARED-SECRET")
    calls = []

    def run_all(cmd, **kwargs):
        calls.append((cmd, kwargs))
        return {"retcode": 0, "stdout": "", "stderr": DOCTOR_STDERR}

    mas_doctor.__salt__["cmd.run_all"] = run_all
    report = mas_doctor.run()
    assert calls[0][0] == [str(tmp_path / "bin" / "mas-cli"), "doctor"]
    assert calls[0][1]["output_loglevel"] == "quiet" and calls[0][1]["python_shell"] is False
    assert report["ok"] == ['✅ Homeserver is reachable at "http://synapse:8008/_matrix/client/versions"']
    assert len(report["warnings"]) == 1 and "This means some clients" in report["warnings"][0]
    assert len(report["errors"]) == 2
    assert report["errors"][0].startswith("❌Can't reach the homeserver admin API")
    assert "THE-SHARED-SECRET" not in repr(report) and "**********" in report["errors"][0]
    assert report["errors"][1].startswith("The legacy login API")
    assert report["result"] is False and mas_doctor.__context__["retcode"] == 1


def test_doctor_strict_fails_on_warnings_only(tmp_path, pillar):
    pillar["mas"] = {"enabled": True, "server_name": "example.com", "base_path": str(tmp_path)}
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "mas-cli").write_text("#!/bin/sh\n")
    warn_only = "\n".join(line for line in DOCTOR_STDERR.splitlines()[:4])
    mas_doctor.__salt__["cmd.run_all"] = lambda cmd, **kw: {"retcode": 0, "stdout": "", "stderr": warn_only}
    assert mas_doctor.run()["result"] is True
    assert "retcode" not in mas_doctor.__context__
    assert mas_doctor.run(strict=True)["result"] is False
