"""Unit tests of ``_modules/mas_secret.py`` and ``_states/mas_secret.py``: secret files, the atomic writer, scrubbing.

The secret functions run for real against files under tmp; only what the
loader would inject is given (``formula_modules.dunders``).
"""

import os
import pathlib
import stat

import pytest
from salt.exceptions import CommandExecutionError, SaltInvocationError

from formula_modules import MODULES, STATES, configure_loader_modules  # noqa: F401 (the loader fixture)
from mas_formula import secretfiles

mas_secret = MODULES["mas_secret"]
secret_state = STATES["mas_secret"]

ME = __import__("pwd").getpwuid(os.geteuid()).pw_name
MY_GROUP = __import__("grp").getgrgid(os.getegid()).gr_name


def test_write_secret_generates_once_with_mode_and_owner(tmp_path):
    path = str(tmp_path / "encryption")
    status = mas_secret.write(path, "hex32", "mas:secrets:encryption", ME, MY_GROUP)
    assert status == {"action": "create", "reason": "generated"}
    value = pathlib.Path(path).read_text()
    assert len(value) == 64 and int(value, 16) >= 0
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert mas_secret.write(path, "hex32", "mas:secrets:encryption", ME, MY_GROUP)["action"] == "none"
    assert pathlib.Path(path).read_text() == value
    os.chmod(path, 0o644)
    assert mas_secret.write(path, "hex32", None, ME, MY_GROUP)["action"] == "fix-mode"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert pathlib.Path(path).read_text() == value


def test_encryption_from_pillar_then_rotation_guard(tmp_path, pillar):
    path = str(tmp_path / "encryption")
    pillar["mas"] = {"secrets": {"encryption": "b" * 64}}
    assert mas_secret.write(path, "hex32", "mas:secrets:encryption", ME, MY_GROUP)["reason"] == "from pillar"
    assert pathlib.Path(path).read_text() == "b" * 64
    pillar["mas"]["secrets"]["encryption"] = "c" * 64
    with pytest.raises(CommandExecutionError, match="allow_encryption_rotation") as err:
        mas_secret.status(path, "hex32", "mas:secrets:encryption", ME, MY_GROUP)
    assert "c" * 64 not in str(err.value) and "b" * 64 not in str(err.value)
    assert (
        mas_secret.write(path, "hex32", "mas:secrets:encryption", ME, MY_GROUP, allow_rotation=True)["action"]
        == "update"
    )
    assert pathlib.Path(path).read_text() == "c" * 64


def test_pepper_is_written_without_newline_from_synapse_config(tmp_path, pillar):
    hs = tmp_path / "homeserver.yaml"
    hs.write_text("password_config:\n  pepper: 'Pepper With Spaces '\n")
    pillar["mas"] = {
        "enabled": True,
        "server_name": "example.com",
        "base_path": str(tmp_path / "mas"),
        "synapse": {"config_files": [str(hs)], "config_dir": str(tmp_path / "conf.d")},
    }
    path = str(tmp_path / "pepper")
    mas_secret.write(path, "pepper", "mas:synapse:pepper", ME, MY_GROUP)
    assert pathlib.Path(path).read_bytes() == b"Pepper With Spaces "


def test_copy_secret_and_missing_source(tmp_path):
    src = tmp_path / "src"
    with pytest.raises(CommandExecutionError, match="does not exist yet"):
        mas_secret.write(str(tmp_path / "dst"), "copy", source=str(src), user=ME, group=MY_GROUP)
    src.write_bytes(b"shared")
    mas_secret.write(str(tmp_path / "dst"), "copy", source=str(src), user=ME, group=MY_GROUP, mode="0640")
    assert (tmp_path / "dst").read_bytes() == b"shared"
    assert stat.S_IMODE((tmp_path / "dst").stat().st_mode) == 0o640


def test_unknown_kind_and_unknown_owner(tmp_path):
    with pytest.raises(SaltInvocationError, match="unknown secret kind"):
        mas_secret.status(str(tmp_path / "x"), "rot13")
    with pytest.raises(CommandExecutionError, match="the user 'no-such-user-4711' does not exist"):
        mas_secret.write(str(tmp_path / "x"), "token", user="no-such-user-4711", group=MY_GROUP)
    assert not (tmp_path / "x").exists()


def test_state_predicts_under_test_mode_without_writing(tmp_path):
    secret_state.__opts__["test"] = True
    ret = secret_state.present(str(tmp_path / "k.pem"), "ec-p256", user=ME, group=MY_GROUP)
    assert ret["result"] is None
    assert ret["changes"] == {"secret": {"old": "absent", "new": "generated"}}
    assert not (tmp_path / "k.pem").exists()
    secret_state.__opts__["test"] = False
    ret = secret_state.present(str(tmp_path / "k.pem"), "ec-p256", user=ME, group=MY_GROUP)
    assert ret["result"] is True and ret["changes"]
    assert b"BEGIN PRIVATE KEY" in (tmp_path / "k.pem").read_bytes()
    again = secret_state.present(str(tmp_path / "k.pem"), "ec-p256", user=ME, group=MY_GROUP)
    assert again["changes"] == {} and "already in place" in again["comment"]


def test_state_failure_is_reported_not_raised(tmp_path, pillar):
    pillar["mas"] = {"database": {}}
    ret = secret_state.present(str(tmp_path / "db"), "pillar", "mas:database:password", user=ME, group=MY_GROUP)
    assert ret["result"] is False
    assert "mas:database:password is not set" in ret["comment"]
    assert ret["changes"] == {}


def test_a_symlink_in_place_of_a_secret_is_refused(tmp_path):
    """Root must never read, chown or chmod what a planted link points at."""
    target = tmp_path / "victim"
    target.write_text("not yours")
    target.chmod(0o644)
    link = tmp_path / "homeserver_secret"
    link.symlink_to(target)
    with pytest.raises(CommandExecutionError, match="symlink is refused"):
        mas_secret.write(str(link), "token", None, ME, MY_GROUP)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644 and target.read_text() == "not yours"


def test_secret_values_match_secret_keys_precisely():
    conf = {
        "form_secret": "Form-Secret-0008",
        "password_config": {"pepper": "Pep-0009", "enabled": "true"},
        "app": [{"as_token": "As-Token-0010"}],
        "signing_key_path": "/etc/x.key",
        "encryption_enabled_by_default_for_room_type": "invite",
        "refresh_token_lifetime": "1000ms",
        "email": {"smtp_pass": "Smtp-0011"},
    }
    assert secretfiles.secret_values(conf, set()) == {"Form-Secret-0008", "Pep-0009", "As-Token-0010", "Smtp-0011"}


def test_mask_hides_secret_values_and_keeps_the_rest():
    conf = {
        "form_secret": "Form-Secret-0008",
        "password_config": {"pepper": "Pep-0009", "enabled": True},
        "signing_key_path": "/etc/x.key",
        "database": {"args": {"password": "Db-0012", "port": 5432}},
        "app": [{"as_token": "As-Token-0010"}],
        "recaptcha_private_key": "Captcha-0013",
    }
    masked = mas_secret.mask(conf)
    assert masked == {
        "form_secret": "**********",
        "password_config": {"pepper": "**********", "enabled": True},
        "signing_key_path": "/etc/x.key",
        "database": {"args": {"password": "**********", "port": 5432}},
        "app": [{"as_token": "**********"}],
        "recaptcha_private_key": "**********",
    }
    assert conf["form_secret"] == "Form-Secret-0008"


# --------------------------------------------------------------------------
# The formula never replaces a file it did not write (issue 8)
# --------------------------------------------------------------------------


@pytest.fixture
def owner(tmp_path):
    own = tmp_path / "own-secrets"
    own.mkdir()
    return {"record": str(tmp_path / "state" / "secrets.json"), "dirs": [str(own)]}


def test_a_foreign_file_is_refused_and_left_as_it_is(tmp_path, owner):
    src = tmp_path / "src"
    src.write_text("the-shared-secret")
    victim = tmp_path / "victim"
    victim.write_text("someone else's data\n")
    assert "not a secret file the formula wrote" in mas_secret.foreign(
        str(victim), "copy", source=str(src), owner=owner
    )
    with pytest.raises(CommandExecutionError, match="never overwrites a file it did not write"):
        mas_secret.write(str(victim), "copy", source=str(src), user=ME, group=MY_GROUP, owner=owner)
    assert victim.read_text() == "someone else's data\n"
    # a link where the secret should be is foreign too
    link = tmp_path / "link"
    link.symlink_to(src)
    assert mas_secret.foreign(str(link), "copy", source=str(src), owner=owner) == "exists and is not a regular file"


def test_written_files_are_recorded_and_stay_the_formulas(tmp_path, owner):
    src = tmp_path / "src"
    src.write_text("first")
    copy = tmp_path / "copy"
    assert (
        mas_secret.write(str(copy), "copy", source=str(src), user=ME, group=MY_GROUP, owner=owner)["action"] == "create"
    )
    record = pathlib.Path(owner["record"])
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    assert str(copy) in record.read_text()
    src.write_text("second")  # the source changes: the formula's own copy follows
    assert (
        mas_secret.write(str(copy), "copy", source=str(src), user=ME, group=MY_GROUP, owner=owner)["action"] == "update"
    )
    assert copy.read_text() == "second"


def test_own_directories_and_identical_content_count_as_the_formulas(tmp_path, owner):
    inside = pathlib.Path(owner["dirs"][0]) / "encryption"
    inside.write_text("a" * 64)
    assert mas_secret.foreign(str(inside), "hex32", owner=owner) == ""
    src = tmp_path / "src"
    src.write_text("same")
    same = tmp_path / "same"
    same.write_text("same")
    assert mas_secret.foreign(str(same), "copy", source=str(src), owner=owner) == ""
    assert mas_secret.foreign(str(tmp_path / "absent"), "copy", source=str(src), owner=owner) == ""
    # without an owner nothing is refused (a direct call outside a deployment)
    assert mas_secret.foreign(str(tmp_path / "src"), "hex32") == ""


def test_leftovers_are_the_client_secrets_of_gone_providers(tmp_path):
    kept = tmp_path / "upstream-01HFVBY12TMNTYTBV8W921M5FA.secret"
    gone = tmp_path / "upstream-01HFVBY12TMNTYTBV8W921M5FB.secret"
    for path in (kept, gone, tmp_path / "encryption", tmp_path / "upstream-notaulid.secret"):
        path.write_text("x")
    assert mas_secret.leftovers(str(tmp_path), [str(kept)]) == [str(gone)]
    assert mas_secret.leftovers(str(tmp_path / "missing")) == []


# --------------------------------------------------------------------------
# Interrupted writes leave nothing where MAS reads every file (issue 21, 6)
# --------------------------------------------------------------------------


def _interrupt_at_fsync(monkeypatch):
    """The minion dies after the temporary file got its content, before the rename (as kill -9 would)."""

    def crash(fd):
        raise KeyboardInterrupt("interrupted")

    monkeypatch.setattr(mas_secret.os, "fsync", crash)


def test_an_interrupted_key_write_leaves_nothing_in_keys_dir(tmp_path, monkeypatch):
    keys, staging = tmp_path / "keys", tmp_path / "secrets"
    keys.mkdir()
    staging.mkdir()
    _interrupt_at_fsync(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        mas_secret.write(str(keys / "rsa.pem"), "ec-p256", user=ME, group=MY_GROUP, tmp_dir=str(staging))
    assert list(keys.iterdir()) == []
    left = mas_secret.temporaries(str(staging))
    assert len(left) == 1 and pathlib.Path(left[0]).name.startswith(".tmp-")
    assert stat.S_IMODE(os.lstat(left[0]).st_mode) == 0o600
    monkeypatch.undo()
    assert mas_secret.write(str(keys / "rsa.pem"), "ec-p256", user=ME, group=MY_GROUP, tmp_dir=str(staging))
    assert [p.name for p in keys.iterdir()] == ["rsa.pem"]
    assert b"PRIVATE KEY" in (keys / "rsa.pem").read_bytes()


def test_without_tmp_dir_the_temporary_file_is_beside_the_target(tmp_path, monkeypatch):
    _interrupt_at_fsync(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        mas_secret.atomic_write(str(tmp_path / "marker.json"), "{}", user=ME, group=MY_GROUP)
    monkeypatch.undo()
    assert [pathlib.Path(p).parent for p in mas_secret.temporaries(str(tmp_path))] == [tmp_path]


def test_tmp_dir_must_exist_and_share_the_filesystem(tmp_path, monkeypatch):
    with pytest.raises(CommandExecutionError, match="does not exist"):
        mas_secret.atomic_write(str(tmp_path / "f"), "x", user=ME, group=MY_GROUP, tmp_dir=str(tmp_path / "none"))
    real_stat = os.stat

    def other_device(path, *args, **kwargs):
        info = real_stat(path, *args, **kwargs)
        if str(path) == str(tmp_path / "elsewhere"):
            return os.stat_result((info.st_mode, info.st_ino, info.st_dev + 1, *info[3:]))
        return info

    (tmp_path / "elsewhere").mkdir()
    monkeypatch.setattr(mas_secret.os, "stat", other_device)
    with pytest.raises(CommandExecutionError, match="would not be atomic"):
        mas_secret.atomic_write(str(tmp_path / "f"), "x", user=ME, group=MY_GROUP, tmp_dir=str(tmp_path / "elsewhere"))
    assert not (tmp_path / "f").exists() and list((tmp_path / "elsewhere").iterdir()) == []


def test_temporaries_are_only_the_writers_files(tmp_path):
    ours = tmp_path / ".tmp-a1b2c3_d"
    ours.write_text("-----BEGIN PRIVATE KEY-----\npartial")
    for name in (".tmp-short", ".tmp-ABCDEFGH", "tmp-abcdefgh", ".tmp-abcdefgh.pem", "rsa.pem"):
        (tmp_path / name).write_text("x")
    (tmp_path / ".tmp-dir12345").mkdir()
    (tmp_path / ".tmp-link1234").symlink_to(ours)
    assert mas_secret.temporaries(str(tmp_path)) == [str(ours)]
    assert mas_secret.temporaries(str(tmp_path / "missing")) == []
