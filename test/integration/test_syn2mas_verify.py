"""``mas_syn2mas.verify`` on what a real migration wrote, then on MAS broken one row at a time.

One real ``state.apply mas.syn2mas`` per module (the real ``mas-cli syn2mas
migrate`` with ``MAS_REAL_CLI``/``MAS_REAL_SHARE``, else the double) from the
world's Synapse (``syn2mas_world.py``: alice an admin with an email, bob with
an email and an upstream link, carol with a phone number, dave deactivated,
erin; each with a device). The verification passes on what syn2mas wrote; then
rows of MAS are broken (an email, a compatibility session, an upstream link
deleted, an admin flag flipped; then a whole user) and ``salt-call
mas_syn2mas.verify`` must name each broken row, and nothing else.
"""

import pytest

from syn2mas_world import SYNAPSE_IDP_ID, USERS, deploy, world_fixture

pytestmark = pytest.mark.integration


world = world_fixture("syn2mas-verify")


@pytest.fixture(scope="module")
def migrated(world, pg, salt_extmods, tmp_path_factory):
    """The formula's real migration into ``mas_verify`` (Synapse stopped by the formula, left stopped)."""
    world.service.write(fail=[])
    world.service.start()
    dbname = "mas_verify"
    root = tmp_path_factory.mktemp("verify")
    # carol's phone number is a warning (MAS cannot use it): accepted here
    dep = deploy(world, pg, salt_extmods, root, dbname, syn2mas={"accept_warnings": True})
    res, ret = dep.migrated()
    assert res.returncode == 0 and ret["result"] is True, ret["comment"]
    yield dep
    dep.assert_no_secret()
    pg.drop_database(dbname)


def mas_rows(dep, statement):
    return dep.pg.query(dep.dbname, statement)


def verify(dep):
    res = dep.call("mas_syn2mas.verify")
    assert isinstance(res.data, dict), res.output
    return res.data


def test_verify_passes_on_what_syn2mas_wrote(migrated):
    ret = verify(migrated)
    assert ret["result"] is True and ret["errors"] == [], ret["errors"]
    counts = ret["counts"]
    # dave is deactivated: his device is not migrated; carol's phone number is no email
    assert counts["synapse"]["users"] == counts["mas"]["users"] == len(USERS)
    assert counts["synapse"]["emails"] == counts["mas"]["emails"] == 2
    assert counts["synapse"]["external_ids"] == counts["mas"]["external_ids"] == 1
    assert counts["synapse"]["devices"] == counts["mas"]["devices"] == len(USERS) - 1
    assert counts["mas"]["compat_sessions"] == len(USERS) - 1
    assert ret["missing"] == {}


def test_verify_names_each_broken_row(migrated, world):
    erin_device = world.tokens["erin"]["device_id"]
    email = mas_rows(
        migrated,
        "DELETE FROM user_emails e USING users u WHERE u.user_id = e.user_id AND u.username = 'bob' RETURNING e.email",
    )
    assert email == [("bob@example.org",)]
    session = (
        "SELECT cs.compat_session_id FROM compat_sessions cs JOIN users u USING (user_id) WHERE u.username = 'erin'"
    )
    mas_rows(migrated, f"DELETE FROM compat_access_tokens WHERE compat_session_id IN ({session})")
    mas_rows(migrated, f"DELETE FROM compat_refresh_tokens WHERE compat_session_id IN ({session})")
    assert mas_rows(
        migrated, f"DELETE FROM compat_sessions WHERE compat_session_id IN ({session}) RETURNING device_id"
    ) == [(erin_device,)]
    assert mas_rows(
        migrated,
        "DELETE FROM upstream_oauth_links l USING users u WHERE u.user_id = l.user_id AND u.username = 'bob' "
        "RETURNING l.subject",
    )
    assert mas_rows(
        migrated, "UPDATE users SET can_request_admin = false WHERE username = 'alice' RETURNING username"
    ) == [("alice",)]

    ret = verify(migrated)
    assert ret["result"] is False
    assert sorted(ret["errors"]) == sorted(
        [
            "1 users have another admin/deactivated/locked/guest state in MAS than in Synapse: alice",
            "1 email addresses of Synapse are missing in MAS: bob: bob@example.org",
            f"1 upstream links of Synapse are missing in MAS: bob ({SYNAPSE_IDP_ID})",
            f"1 Synapse devices have no compatibility session in MAS: erin: {erin_device}",
        ]
    ), ret["errors"]
    assert ret["missing"] == {"users": 1, "emails": 1, "external_ids": 1, "devices": 1}
    assert ret["counts"]["mas"]["emails"] == 1 and ret["counts"]["mas"]["devices"] == len(USERS) - 2

    # a user MAS lacks altogether: named as missing, with the rows that went with it
    carol = "SELECT user_id FROM users WHERE username = 'carol'"
    carol_sessions = f"SELECT compat_session_id FROM compat_sessions WHERE user_id IN ({carol})"
    for statement in (
        f"DELETE FROM compat_access_tokens WHERE compat_session_id IN ({carol_sessions})",
        f"DELETE FROM compat_refresh_tokens WHERE compat_session_id IN ({carol_sessions})",
        f"DELETE FROM compat_sessions WHERE user_id IN ({carol})",
        f"DELETE FROM user_passwords WHERE user_id IN ({carol})",
        f"DELETE FROM user_unsupported_third_party_ids WHERE user_id IN ({carol})",
        "DELETE FROM users WHERE username = 'carol'",
    ):
        mas_rows(migrated, statement)
    ret = verify(migrated)
    assert "1 Synapse users are missing in MAS: carol" in ret["errors"], ret["errors"]
    carol_device = world.tokens["carol"]["device_id"]
    assert (
        "2 Synapse devices have no compatibility session in MAS: "
        + ", ".join(sorted([f"carol: {carol_device}", f"erin: {erin_device}"]))
        in ret["errors"]
    ), ret["errors"]
    assert ret["missing"] == {"users": 2, "emails": 1, "external_ids": 1, "devices": 2}
