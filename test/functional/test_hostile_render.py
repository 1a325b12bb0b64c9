"""Every SLS renders pillar values as data (issue 8, "Render values as data").

Each SLS of the formula is rendered by Salt's own renderers (the one its
shebang names, the formula's ``#!mas_py`` or ``#!yaml``; ``slsutil.renderer`` in one salt
process) twice: with a valid map, and with the same map where every string value carries a hostile tail (newlines,
quotes, ``:``, ``{{``, ``{%``, ``#``, ``;``, an injected ``cmd.run`` state).
The map is what ``mas.mapdata`` gives the SLS; validation would refuse such
values, so the test hands the map to the renderer directly, as if a value had
slipped through. With the tail removed again, the hostile render must equal
the valid one: the same state IDs, the same argument keys, the same values.
A value spliced into the SLS as text would add or break states instead.
"""

import json
import re
import subprocess
import sys

import pytest
import yaml

from formula_modules import DEFAULTS
from pillars import deep_update
from saltrun import RENDERED_ON_A_MASTER, REPO_ROOT

SLS = {
    ".".join(p.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".init"): "salt://"
    + str(p.relative_to(REPO_ROOT))
    for p in sorted((REPO_ROOT / "mas").rglob("*.sls"))
    if str(p.relative_to(REPO_ROOT)) not in RENDERED_ON_A_MASTER
}

TAIL = "'\"\n\nmas-injected:\n  cmd.run:\n    - name: touch pwned\n# {{ 7 * 7 }} {% if 1 %}x{% endif %} ; : -- [a] {b}"

# Values that choose a branch (not data): left as they are. ``user``/``group`` too: whether the
# account exists on the minion chooses user.present or a test.nop (mas.account); both are names the
# pillar's grammar checks (test_hostile_pillars).
KEEP = ("runtime", "type", "web_bind", "internal_bind", "user", "group")

RENDER = """
import copy, json, sys
import salt.client

caller = salt.client.Caller(c_path=sys.argv[1])
funcs = caller.sminion.functions
spec = json.load(open(sys.argv[2]))
tail, keep = spec["tail"], set(spec["keep"])


def hostile(node, key=None):
    if isinstance(node, dict):
        return {k: hostile(v, k) for k, v in node.items()}
    if isinstance(node, list):
        return [hostile(v, key) for v in node]
    if isinstance(node, str) and key not in keep:
        return node + tail
    return node


out = {}
for variant in spec["variants"]:
    benign = funcs["mas.settings"](variant["data"])
    maps = {"benign": benign, "hostile": hostile(benign)}
    funcs["mas_syn2mas.phase"] = lambda *a, **k: variant["phase"]
    funcs["user.info"] = lambda *a, **k: {}
    for kind, mapdata in maps.items():
        funcs["mas.mapdata"] = lambda *a, _m=mapdata, **k: copy.deepcopy(_m)
        for sls, path in spec["sls"]:
            try:
                rendered = caller.cmd("slsutil.renderer", path, default_renderer="jinja|yaml", sls=sls)
            except Exception as exc:  # noqa: BLE001 -- reported as the render's outcome
                rendered = "RENDER FAILED: " + repr(exc)
            out.setdefault(variant["name"], {}).setdefault(sls, {})[kind] = rendered
print(json.dumps(out))
"""

BASE = {
    "enabled": True,
    "server_name": "example.com",
    "base_path": "/srv/mas",
    "user": "mas",
    "group": "mas",
    "binary": {"path": "/usr/local/bin/mas-cli", "share_dir": "/usr/local/share/mas-cli"},
    "secrets": {"encryption": "0123456789abcdef" * 4},
    "database": {"password": "db-password"},
    "email": {
        "transport": "smtp",
        "hostname": "smtp.example.com",
        "mode": "starttls",
        "username": "mas",
        "password": "smtp-password",
    },
    "upstream_oauth2_providers": [
        {
            "id": "01HFVBY12TMNTYTBV8W921M5FA",
            "synapse_idp_id": "oidc-kc",
            "issuer": "https://id.example.com/",
            "client_id": "mas",
            "client_secret": "client-secret",
            "token_endpoint_auth_method": "client_secret_post",
        }
    ],
    "users": [{"username": "bot", "password": "bot-password", "emails": ["bot@example.com"]}],
    "config": {"branding": {"service_name": "Example"}},
}

VARIANTS = [
    {
        "name": "docker-traefik-managed",
        "phase": "none",
        "data": {
            "runtime": "docker",
            "service": {"manage": True},
            "database": {"manage": True},
            "proxy": {"type": "traefik", "traefik": {"certresolver": "letsencrypt"}},
        },
    },
    {
        "name": "docker-nginx-syn2mas-migrating",
        "phase": "migrating",
        "data": {"runtime": "docker", "service": {"manage": True}},
    },
    {
        "name": "binary-nginx-own-host-well-known-migrating",
        "phase": "none",
        "data": {
            "runtime": "binary",
            "hostname": "auth.example.com",
            "migration_in_progress": True,
            "synapse": {"restart": False},
            "proxy": {"nginx": {"well_known": True}},
        },
    },
    {"name": "disabled-purge", "phase": "none", "data": {"enabled": False, "clean": {"purge": True}}},
]


def strip(node, tails):
    """``node`` with every hostile tail (raw, or as JSON/nginx escaped it) removed."""
    if isinstance(node, dict):
        return {strip(k, tails): strip(v, tails) for k, v in node.items()}
    if isinstance(node, list):
        return [strip(v, tails) for v in node]
    if isinstance(node, str):
        for tail in tails:
            node = node.replace(tail, "")
    return node


def file_texts(rendered, tails):
    """``rendered`` with each ``contents`` argument (a file's text, rendered by ``mas.render``) read back:
    YAML (config.yaml) as its data, tails stripped; any other text (unit, nginx: their values are checked
    by the pillar's grammar, test_hostile_pillars) as a placeholder."""
    out = {}
    for sid, body in rendered.items():
        if not isinstance(body, dict):
            out[sid] = body
            continue
        out[sid] = {fun: [_file_arg(arg, tails) for arg in args] for fun, args in body.items()}
    return out


def _file_arg(arg, tails):
    if not (isinstance(arg, dict) and isinstance(arg.get("contents"), str)):
        return arg
    try:
        data = yaml.safe_load(arg["contents"])
    except yaml.YAMLError:
        data = None
    return {"contents": strip(data, tails) if isinstance(data, dict) else "<file text>"}


def ids_and_keys(rendered):
    """{state ID: [(state function, [argument keys])]} of a rendered SLS."""
    out = {}
    for sid, body in rendered.items():
        if sid in ("include", "extend") or not isinstance(body, dict):
            continue
        out[sid] = sorted(
            (fun, sorted(next(iter(arg)) for arg in args if isinstance(arg, dict))) for fun, args in body.items()
        )
    return out


@pytest.fixture(scope="module")
def renders(module_salt_minion, tmp_path_factory):
    spec = {
        "tail": TAIL,
        "keep": KEEP,
        "sls": sorted(SLS.items()),
        "variants": [dict(v, data=deep_update(DEFAULTS, deep_update(BASE, v["data"]))) for v in VARIANTS],
    }
    spec_file = tmp_path_factory.mktemp("render") / "spec.json"
    spec_file.write_text(json.dumps(spec))
    proc = subprocess.run(
        [sys.executable, "-c", RENDER, str(module_salt_minion.confdir / "minion"), str(spec_file)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


#: A state ID of the formula: mas-<sls path>-<module>-<function>[-<item>] (template-formula's convention).
STATE_ID = re.compile(r"mas-[a-z0-9_-]+(?:-[A-Za-z0-9_.@-]+)?")


def test_every_sls_is_rendered(renders):
    """Each SLS renders, for every variant, to state data of the shape Salt runs: includes of SLS the formula has,
    and states ``{id: {"module.function": [{argument: value}, ...]}}`` under stable IDs; the enabled deployments hold
    the formula's main states."""
    assert len(SLS) >= 25
    for variant in VARIANTS:
        ids = set()
        for sls in SLS:
            rendered = renders[variant["name"]][sls]["benign"]
            where = (variant["name"], sls)
            assert isinstance(rendered, dict), (*where, rendered)
            for included in rendered.get("include", []):
                # a relative include is relative to the SLS's package: itself for an init.sls
                package = sls if SLS[sls].endswith("/init.sls") else sls.rsplit(".", 1)[0]
                name = package + included if included.startswith(".") else included
                assert name in SLS, (*where, included)
            for sid, body in rendered.items():
                if sid in ("include", "extend"):
                    continue
                assert STATE_ID.fullmatch(sid), (*where, sid)
                assert isinstance(body, dict) and len(body) == 1, (*where, sid, body)
                (function, args) = next(iter(body.items()))
                assert re.fullmatch(r"[a-z0-9_]+\.[a-z0-9_]+", function), (*where, sid, function)
                assert all(isinstance(a, dict) and len(a) == 1 for a in args), (*where, sid, args)
                ids.add(sid)
        if variant["data"].get("enabled", True):
            for expected in ("mas-config-file-file-managed", "mas-service-unit-file-managed"):
                assert expected in ids, (variant["name"], expected)
        else:
            assert "mas-synapse-clean-file-absent-dropin" in ids, variant["name"]


@pytest.mark.parametrize("variant", [v["name"] for v in VARIANTS])
def test_hostile_values_leave_every_sls_structure_unchanged(renders, variant):
    escaped = json.dumps(TAIL)[1:-1]
    tails = [escaped.replace("\\", "\\\\").replace("'", "\\'"), escaped, TAIL]
    for sls in SLS:
        benign, hostile = renders[variant][sls]["benign"], renders[variant][sls]["hostile"]
        assert isinstance(hostile, dict), f"{sls}: {hostile}"
        assert "mas-injected" not in hostile, sls
        assert ids_and_keys(strip(hostile, tails)) == ids_and_keys(benign), sls
        assert strip(file_texts(hostile, tails), tails) == file_texts(benign, tails), sls


def test_the_hostile_tail_reaches_the_states_as_data(renders):
    """The test must be able to fail: the tail really is in the rendered values."""
    rendered = json.dumps(renders["docker-traefik-managed"])
    assert json.dumps(TAIL)[1:-1] in rendered
