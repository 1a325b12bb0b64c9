"""Unit tests of ``_modules/mas_user.py``: usernames and where a password comes from (file, pillar)."""

import pytest
from salt.exceptions import SaltInvocationError

from formula_modules import MODULES, dunders

mas_user = MODULES["mas_user"]


@pytest.fixture
def pillar():
    return {}


@pytest.fixture
def configure_loader_modules(pillar):
    return dunders(pillar)


@pytest.mark.parametrize(
    "given,expected", [("alice", "alice"), ("@alice:example.com", "alice"), ("bot.x_1=/+-", "bot.x_1=/+-")]
)
def test_localpart_normalisation(given, expected):
    assert mas_user._localpart(given) == expected


@pytest.mark.parametrize("given", ["", "Alice", "al ice", "@:example.com"])
def test_localpart_refused(given):
    with pytest.raises(SaltInvocationError, match="username"):
        mas_user._localpart(given)


def test_password_sources(tmp_path, pillar):
    (tmp_path / "pw").write_text("from-file\n")
    pillar["mas"] = {"users": [{"username": "a", "password": "from-pillar"}]}
    assert mas_user._password(None, str(tmp_path / "pw"), None) == "from-file"
    assert mas_user._password(None, None, "mas:users:0:password") == "from-pillar"
    assert mas_user._password("given", None, None) == "given"
    assert mas_user._password(None, None, None) is None
    with pytest.raises(SaltInvocationError, match="at most one"):
        mas_user._password("a", str(tmp_path / "pw"), None)
    with pytest.raises(SaltInvocationError, match="mas:users:1:password is not set"):
        mas_user._password(None, None, "mas:users:1:password")
