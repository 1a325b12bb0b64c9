"""Pillar keys of the login paths (issue 20): MAS's claims templates, the CA bundle MAS trusts,
TLS on Traefik's routers.

- ``claims_imports`` templates are MAS's Jinja, which Salt's own Jinja pass over a pillar file
  renders away: a template that arrives empty or with no ``{{ ... }}`` left is refused, naming
  the key and saying how to keep it (``{% raw %}`` or a ``#!yaml`` pillar file).
- ``mas:ca_bundle`` is a path (the grammar of every path), and reaches MAS as ``SSL_CERT_FILE``:
  the binary unit's ``Environment=``, the docker wrapper's read-only mount and ``--env``.
- ``mas:proxy:traefik:tls`` (default true, as the playbook): false leaves ``tls`` off every
  router and label, for a plain-HTTP entrypoint; with a certresolver it is refused.

The templates are rendered with Jinja and Salt's filters, as ``mas.render`` does.
"""

import jinja2
import jinja2.sandbox
import pytest
import salt.utils.jinja
from salt.exceptions import SaltInvocationError
from salt.utils.decorators.jinja import JinjaFilter

from formula_modules import DEFAULTS, MODULES, configure_loader_modules, mapdata  # noqa: F401 (the loader fixture)
from pillars import deep_update
from saltrun import REPO_ROOT

mas = MODULES["mas"]
mas_proxy = MODULES["mas_proxy"]
ULID = "01HFVBY12TMNTYTBV8W921M5FA"
NAME = "matrix-authentication-service"


def provider(**claims):
    return {
        "id": ULID,
        "issuer": "https://id.example.com/",
        "client_id": "mas",
        "token_endpoint_auth_method": "client_secret_basic",
        "client_secret": "s3cret",
        "claims_imports": claims,
    }


def refusal(**pillar):
    data = deep_update(DEFAULTS, {"enabled": True, "server_name": "example.com", "base_path": "/srv/mas"})
    with pytest.raises(SaltInvocationError) as err:
        mas.settings(deep_update(data, pillar))
    return str(err.value)


# ------------------------------------------------------------- claims_imports


@pytest.mark.parametrize(
    ("claim", "template", "said"),
    [
        ("localpart", "", "is empty"),
        ("localpart", "   ", "is empty"),
        ("localpart", None, "is empty"),
        ("subject", "alice", "is 'alice', a constant with no {{ ... }} left in it"),
        ("displayname", "{ user.name }", "a constant with no {{ ... }}"),
        ("email", 42, "is empty"),
        ("account_name", "", "is empty"),
    ],
)
def test_a_claims_template_salt_rendered_away_is_refused_naming_the_key(claim, template, said):
    text = refusal(upstream_oauth2_providers=[provider(**{claim: {"action": "force", "template": template}})])
    key = f"mas:upstream_oauth2_providers:0:claims_imports:{claim}:template"
    line = next(line for line in text.splitlines() if key in line)
    assert said in line
    assert "{% raw %}{{ user.preferred_username }}{% endraw %}" in line and "#!yaml" in line


@pytest.mark.parametrize(
    "template",
    [
        "{{ user.preferred_username }}",
        "{{ user.preferred_username | lower }}",
        "@{{ user.sub }}",
        "{% if user.nick %}{{ user.nick }}{% else %}{{ user.sub }}{% endif %}",
    ],
)
def test_mas_templates_pass(template):
    out = mapdata(upstream_oauth2_providers=[provider(localpart={"action": "force", "template": template})])
    provider_out = out["mas_config"]["upstream_oauth2"]["providers"][0]
    assert provider_out["claims_imports"]["localpart"]["template"] == template


def test_a_raw_block_in_a_jinja_pillar_keeps_the_template():
    """What README and pillar.example tell: Salt's Jinja pass leaves MAS's template as written."""
    pillar = (REPO_ROOT / "pillar.example").read_text()
    start = pillar.index("claims_imports:")
    block = pillar[start : pillar.index("\n\n", start)]
    rendered = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False).from_string(block).render()  # noqa: S701 (YAML, not HTML)
    assert "template: '{{ user.preferred_username }}'" in rendered
    with pytest.raises(jinja2.UndefinedError, match="'user' is undefined"):
        jinja2.Environment(autoescape=False).from_string("template: '{{ user.preferred_username }}'").render()  # noqa: S701


# ---------------------------------------------------------------- ca_bundle


@pytest.mark.parametrize("value", ["etc/ssl/ca.pem", "/etc/ssl/../ca.pem", "/etc/ssl/ca bundle.pem", "/x\n", 5])
def test_ca_bundle_must_be_a_path(value):
    text = refusal(ca_bundle=value)
    assert "mas:ca_bundle: must be the path of a PEM CA bundle file" in text


def _render(template, context):
    env = jinja2.sandbox.SandboxedEnvironment(
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        extensions=["jinja2.ext.do", salt.utils.jinja.SerializerExtension],
    )
    env.filters.update(JinjaFilter.salt_jinja_filters)
    text = (REPO_ROOT / "mas" / "files" / "default" / template).read_text()
    return env.from_string(text).render(**context)


def _contexts(data):
    common = {
        "paths": data["paths"],
        "runtime": data["runtime"],
        "image": data["image"],
        "binary": data["paths"]["mas_binary"],
        "user": data["user"],
        "group": data["group"],
        "docker": data["service"]["docker"],
        "ca_bundle": data["ca_bundle"],
        "mounts": data["docker_mounts"],
    }
    wrapper = dict(common, labels_file="", salt_call="/usr/bin/salt-call", salt_config_dir="/etc/salt")
    unit = dict(common, name=data["service"]["name"], restart=data["service"]["restart"])
    return wrapper, unit


BINARY = {"runtime": "binary", "binary": {"path": "/usr/local/bin/mas-cli", "share_dir": "/usr/local/share/mas-cli"}}


def test_ca_bundle_reaches_the_binary_unit_and_wrapper():
    wrapper, unit = _contexts(mapdata(ca_bundle="/etc/ssl/private-ca.pem", **BINARY))
    assert "Environment=SSL_CERT_FILE=/etc/ssl/private-ca.pem\n" in _render("unit.service.jinja", unit)
    assert "SSL_CERT_FILE=/etc/ssl/private-ca.pem\nexport SSL_CERT_FILE\n" in _render("mas-cli.sh.jinja", wrapper)
    wrapper, unit = _contexts(mapdata(**BINARY))
    assert "SSL_CERT_FILE" not in _render("unit.service.jinja", unit)
    assert "SSL_CERT_FILE" not in _render("mas-cli.sh.jinja", wrapper)


def test_ca_bundle_is_mounted_read_only_into_the_docker_runtime():
    wrapper, unit = _contexts(mapdata(ca_bundle="/etc/ssl/private-ca.pem", runtime="docker"))
    script = _render("mas-cli.sh.jinja", wrapper)
    assert "--mount=type=bind,src=/etc/ssl/private-ca.pem,dst=/etc/ssl/private-ca.pem,readonly \\\n" in script
    assert "--env=SSL_CERT_FILE=/etc/ssl/private-ca.pem \\\n" in script
    # the docker unit runs the wrapper, which carries both
    assert f"ExecStart={wrapper['paths']['mas_cli']} server" in _render("unit.service.jinja", unit)
    wrapper, _ = _contexts(mapdata(runtime="docker"))
    assert "SSL_CERT_FILE" not in _render("mas-cli.sh.jinja", wrapper)


# ------------------------------------------------------------- Traefik TLS


def _traefik(**traefik):
    out = mas_proxy.settings(mapdata(proxy={"type": "traefik", "traefik": traefik}))
    return out["files"][0]["context"]["config"]["http"], out["labels"]


def test_traefik_routers_have_tls_by_default_as_the_playbook():
    http, labels = _traefik()
    assert {name: router["tls"] for name, router in http["routers"].items()} == {NAME: {}, f"{NAME}-compat": {}}
    assert labels[f"traefik.http.routers.{NAME}.tls"] == "true"
    http, labels = _traefik(certresolver="le")
    assert http["routers"][NAME]["tls"] == {"certResolver": "le"}
    assert labels[f"traefik.http.routers.{NAME}-compat.tls.certResolver"] == "le"


def test_traefik_routers_without_tls_for_a_plain_http_entrypoint():
    http, labels = _traefik(tls=False, entrypoint="web")
    assert all("tls" not in router for router in http["routers"].values())
    assert all(router["entryPoints"] == ["web"] for router in http["routers"].values())
    assert not any(".tls" in key for key in labels)
    assert labels[f"traefik.http.routers.{NAME}-compat.priority"] == "1000"


@pytest.mark.parametrize(
    ("traefik", "said"),
    [
        ({"tls": "no"}, "mas:proxy:traefik:tls: must be true or false, not 'no'"),
        (
            {"tls": False, "certresolver": "le"},
            "mas:proxy:traefik:certresolver: must be empty when mas:proxy:traefik:tls is false",
        ),
    ],
)
def test_traefik_tls_refusals(traefik, said):
    assert said in refusal(proxy={"type": "traefik", "traefik": traefik})
