"""Bot tokens from a MAS without personal sessions (issue 11): the formula falls
back to a compatibility token from ``mas-cli manage issue-compatibility-token``
(the double's admin API answers 404 for ``/personal-sessions`` under
``MAS_DOUBLE_FAULT=no-personal-sessions``), checks it with MAS's introspection
and keeps it while it is valid.
"""

import pytest

from harness import mas as mas_target
from mas_double import run_server
from pillars import deep_update

pytestmark = pytest.mark.integration


@mas_target.double_only  # a MAS without personal sessions is the double's fault switch
def test_bot_token_falls_back_to_a_compatibility_token(deployment, tmp_path):
    minion, synapse = deployment["minion"], deployment["synapse"]
    config = deployment["root"] / "mas" / "config" / "config.yaml"
    deployment["mas"].stop()  # this module's only test: the server comes back without personal sessions
    env = {"MAS_DOUBLE_FAULT": "no-personal-sessions"}
    with run_server([config], env=env, log_path=tmp_path / "mas.log"):
        token_file = tmp_path / "token"
        pillar = deep_update(
            deployment["pillar"],
            {
                "users": [
                    {"username": "legacy-bot", "access_token": {"path": str(token_file), "device_id": "LEGACYBOT"}}
                ]
            },
        )
        res = minion.apply(pillar, sls="mas.users", log_level="debug")
        assert res.returncode == 0, res.output
        ret = res.by_id("mas-users-mas_user-bot_token-legacy-bot")
        assert ret["changes"] == {
            "token": {"old": "no token file", "new": "issued (compatibility token: this MAS has no personal sessions)"}
        }
        token = token_file.read_text().strip()
        assert token.startswith("mct_") and token not in res.output
        assert oct(token_file.stat().st_mode & 0o777) == "0o600"

        whoami = synapse.request("GET", "/_matrix/client/v3/account/whoami", token=token)
        assert whoami.status_code == 200, whoami.text
        assert (whoami.json()["user_id"], whoami.json()["device_id"]) == ("@legacy-bot:example.com", "LEGACYBOT")

        again = minion.apply(pillar, sls="mas.users")
        assert again.returncode == 0 and again.changed == [], again.output
        assert token_file.read_text().strip() == token

        # a token MAS no longer knows is replaced
        token_file.write_text("mct_not_a_token_at_all_000000_000000\n")
        res = minion.apply(pillar, sls="mas.users")
        assert (
            res.by_id("mas-users-mas_user-bot_token-legacy-bot")["changes"]["token"]["old"] == "token no longer valid"
        )
        fresh = token_file.read_text().strip()
        assert fresh.startswith("mct_") and fresh != token
        whoami = synapse.request("GET", "/_matrix/client/v3/account/whoami", token=fresh)
        assert whoami.status_code == 200, whoami.text
        assert (whoami.json()["user_id"], whoami.json()["device_id"]) == ("@legacy-bot:example.com", "LEGACYBOT")
