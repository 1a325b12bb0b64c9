"""Unit tests of ``_modules/mas_clean.py`` and ``_states/mas_clean.py``: the purge removes what the formula made.

The functions run for real on a deployment's tree under tmp (laid out as the
formula writes it); only what the loader would inject is given
(``formula_modules.dunders``).
"""

import json
import os

import pytest
from salt.exceptions import CommandExecutionError

from formula_modules import MODULES, STATES, configure_loader_modules  # noqa: F401 (the loader fixture)
from formula_modules import mapdata as formula_map

mas_clean = MODULES["mas_clean"]
purged = STATES["mas_clean"].purged
BANNER = "# File managed by Salt (mas formula): changes will be overwritten.\n"
RELEASE = "mas-cli-0123456789abcdef"


def deployment(base, **pillar):
    """The map of a disabled deployment at ``base`` and its tree, as the formula leaves it."""
    mas = formula_map(
        enabled=False,
        base_path=str(base),
        registration_tokens={"friends": {}},
        binary={"source": "https://example.com/mas.tar.gz", "source_hash": "sha256=" + "0123456789abcdef" * 4},
        runtime="binary",
        **pillar,
    )
    files = {
        "config/config.yaml": BANNER,
        "bin/mas-cli": "#!/bin/sh\n" + BANNER,
        "bin/register-user": "#!/bin/sh\n" + BANNER,
        "config/secrets/encryption": "a" * 64,
        "config/secrets/upstream-01HFVBY12TMNTYTBV8W921M5FA.secret": "gone provider",
        "config/keys/rsa.pem": "key",
        "config/keys/.tmp-a1b2c3d4": "interrupted",
        "formula/syn2mas.json": "{}",
        "registration-tokens/friends": "token",
        "registration-tokens/recorded": "token",
        f"dist/{RELEASE}/mas-cli": "binary",
        f"dist/{RELEASE}/share/policy.wasm": "policy",
    }
    for name, text in files.items():
        (base / name).parent.mkdir(parents=True, exist_ok=True)
        (base / name).write_text(text)
    (base / "data").mkdir()
    record = {"files": [str(base / "registration-tokens" / "recorded"), str(base / "config" / "keys" / "rsa.pem")]}
    (base / "formula" / "secrets.json").write_text(json.dumps(record))
    return mas


def tree(base):
    return sorted(str(p.relative_to(base)) for p in base.rglob("*"))


def test_purge_removes_everything_the_formula_made(tmp_path):
    base = tmp_path / "mas"
    mas = deployment(base)
    plan = mas_clean.purge_plan(mas)
    assert plan["kept"] == {}
    assert plan["trees"] == [str(base / "dist" / RELEASE)]
    assert plan["directories"][-1] == str(base)
    done = mas_clean.purge(mas)
    assert done["kept"] == {} and not base.exists()
    assert set(done["removed"]) == set(plan["files"] + plan["trees"] + plan["directories"])


def test_purge_keeps_what_it_cannot_tell_as_its_own(tmp_path):
    base = tmp_path / "mas"
    mas = deployment(base)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "precious").write_text("not the formula's")
    foreign = {
        "config/config.yaml": "# the playbook's config\n",  # a formula path, no banner
        "config/operator.yaml": "mine",
        "config/secrets/my.secret": "mine",
        "config/secrets/.tmp-notes.txt": "not the writer's name",
        "registration-tokens/by-hand": "a token the formula did not make",
        "dist/mas-cli-manual/mas-cli": "an operator's build",
        "formula/notes": "mine",
        "data/sessions.db": "MAS's",
        "other.txt": "another service's",
    }
    for name, text in foreign.items():
        (base / name).parent.mkdir(parents=True, exist_ok=True)
        (base / name).write_text(text)
    (base / "config" / "keys" / "ec-p256.pem").symlink_to(outside / "precious")
    (base / "bin" / "linked").symlink_to(outside)
    predicted = tree(base)
    plan = mas_clean.purge_plan(mas)
    assert tree(base) == predicted  # the plan touches nothing
    done = mas_clean.purge(mas)
    for name, text in foreign.items():
        assert (base / name).read_text() == text
    assert (outside / "precious").read_text() == "not the formula's"
    kept = done["kept"]
    assert kept == plan["kept"]
    assert kept[str(base / "config" / "config.yaml")].startswith("not written by the formula")
    assert kept[str(base / "dist" / "mas-cli-manual")] == "a directory the formula did not make"
    assert kept[str(base / "config" / "keys" / "ec-p256.pem")].startswith("a link")
    assert kept[str(base / "config")] == "not empty: it holds what is kept"
    assert tree(base) == sorted(
        [
            "bin",
            "bin/linked",
            "config",
            "config/config.yaml",
            "config/keys",
            "config/keys/ec-p256.pem",
            "config/operator.yaml",
            "config/secrets",
            "config/secrets/.tmp-notes.txt",
            "config/secrets/my.secret",
            "data",
            "data/sessions.db",
            "dist",
            "dist/mas-cli-manual",
            "dist/mas-cli-manual/mas-cli",
            "formula",
            "formula/notes",
            "other.txt",
            "registration-tokens",
            "registration-tokens/by-hand",
        ]
    )


def test_a_link_in_place_of_a_directory_is_never_followed(tmp_path):
    base = tmp_path / "mas"
    mas = deployment(base)
    target = tmp_path / "real-keys"
    (base / "config" / "keys").rename(target)
    (base / "config" / "keys").symlink_to(target)
    done = mas_clean.purge(mas)
    assert sorted(os.listdir(target)) == [".tmp-a1b2c3d4", "rsa.pem"]
    assert "not a directory" in done["kept"][str(base / "config" / "keys")]


def test_purge_is_refused_while_enabled(tmp_path):
    mas = formula_map(base_path=str(tmp_path / "mas"))
    with pytest.raises(CommandExecutionError, match="mas:enabled is true"):
        mas_clean.purge_plan(mas)


def test_state_predicts_then_reports_old_and_new(tmp_path, monkeypatch):
    base = tmp_path / "mas"
    mas = deployment(base)
    (base / "config" / "operator.yaml").write_text("mine")
    monkeypatch.setitem(purged.__globals__["__opts__"], "test", True)
    before = tree(base)
    ret = purged(str(base), mapdata=mas)
    assert ret["result"] is None and tree(base) == before
    assert str(base / "config" / "secrets" / "encryption") in ret["changes"]["old"]
    assert ret["changes"]["new"]["kept"][str(base / "config" / "operator.yaml")].startswith("not written")
    monkeypatch.setitem(purged.__globals__["__opts__"], "test", False)
    done = purged(str(base), mapdata=mas)
    assert done["result"] is True and done["changes"]["old"] == ret["changes"]["old"]
    assert "operator.yaml: not written by the formula" in done["comment"]
    again = purged(str(base), mapdata=mas)
    assert again["changes"] == {} and again["comment"].startswith("Nothing the formula made is left")
    refused = purged(str(base), mapdata=dict(mas, enabled=True))
    assert refused["result"] is False and "mas:enabled is true" in refused["comment"]
