"""Unit tests of ``_modules/mas_db.py`` (the SCRAM verifier: the role's password never leaves the minion)."""

from formula_modules import MODULES

mas_db = MODULES["mas_db"]


def test_scram_verifier_round_trip():
    verifier = mas_db._scram_verifier("s3cret")
    assert verifier.startswith("SCRAM-SHA-256$4096:")
    assert "s3cret" not in verifier
    assert mas_db._scram_matches(verifier, "s3cret")
    assert not mas_db._scram_matches(verifier, "other")
    assert not mas_db._scram_matches("md5abc", "s3cret")
