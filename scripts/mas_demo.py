"""The README quick-start demo: apply the formula masterless with
``pillar.example`` into one directory (``./demo-root``), no server needed.

Everything it makes is under that directory: the rendered tree (paths
redirected there), Salt's config, cache and logs (``<root>/salt``) and a
stand-in of Synapse's ``homeserver.yaml``. Nothing is started (the service is
left unmanaged, Synapse is not restarted, the proxy not reloaded) and no
account is created: the service account is the existing account running the
demo. ``scripts/salt-call`` then runs Salt against the same config, so that
every operator command of the README can be tried on the demo.

Usage: ``.venv/bin/python scripts/mas_demo.py [--clean] [DEMO_ROOT]``.
"""

import argparse
import grp
import os
import pathlib
import pwd
import shutil
import subprocess
import sys

import yaml

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO / "demo-root"

FORMULA_DIRS = ("mas", "_modules", "_states", "_utils", "_renderers", "_pillar")

#: Written first into the demo root: ``--clean`` removes only a directory
#: that holds it.
MARKER = ".mas-demo"

#: Synapse's config as the demo pretends it is (read by the conflict check
#: and by syn2mas; no Synapse runs). No secret in it.
HOMESERVER_YAML = {
    "server_name": "example.com",
    "public_baseurl": "https://matrix.example.com/",
    "database": {"name": "sqlite3", "args": {"database": "/var/lib/matrix-synapse/homeserver.db"}},
}


def link_formula(dest):
    """Make ``dest`` a file root holding only the formula (links to mas/,
    _modules/, _states/, _utils/, _renderers/, _pillar/), as a formulas directory or gitfs would serve it:
    the checkout's root also holds a virtualenv that Salt's file server would
    otherwise walk on every run."""
    dest = pathlib.Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in FORMULA_DIRS:
        link = dest / name
        if not link.is_symlink():
            link.symlink_to(REPO / name, target_is_directory=True)
    return dest


def account():
    """The existing account the demo uses as MAS's (and Synapse's): the one running it."""
    user = pwd.getpwuid(os.geteuid())
    return user.pw_name, grp.getgrgid(user.pw_gid).gr_name


def overrides(root, user=None, group=None):
    """Pillar overrides that keep the demo inside ``root``; with ``user``/``group``,
    the existing account MAS and Synapse run as (default: pillar.example's ``mas``
    for MAS, root for Synapse)."""
    account_keys = {"user": user, "group": group} if user else {}
    return {
        "base_path": f"{root}/matrix/matrix-authentication-service",
        **account_keys,
        "service": {"manage": False, "unit_dir": f"{root}/etc/systemd/system"},
        "synapse": {
            "user": user or "root",
            "group": group or "root",
            "restart": False,
            "config_dir": f"{root}/etc/matrix-synapse/conf.d",
            "config_files": [f"{root}/etc/matrix-synapse/homeserver.yaml"],
        },
        "proxy": {
            "reload": False,
            "nginx": {
                "snippet_path": f"{root}/etc/nginx/snippets/matrix-authentication-service.conf",
                "public_snippet_path": f"{root}/etc/nginx/snippets/matrix-authentication-service-public.conf",
            },
            "traefik": {"config_path": f"{root}/etc/traefik/dynamic/matrix-authentication-service.yml"},
        },
        # no Synapse (and no database) on the demo machine: a new homeserver
        "syn2mas": {"assume_fresh": True},
    }


def _merge(base, upd):
    for key, value in upd.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def minion_config(root):
    """Salt's minion config of the demo: every path Salt writes is under ``root``/salt."""
    salt_dir = root / "salt"
    return {
        "id": "mas-demo",
        "file_client": "local",
        # Salt prefixes root_dir to its cache, pki, sock and log paths
        "root_dir": str(salt_dir / "root"),
        "file_roots": {"base": [str(link_formula(salt_dir / "formula"))]},
        "pillar_roots": {"base": [str(salt_dir / "pillar")]},
    }


def prepare(root):
    """Write the marker, Salt's config, the pillar and the Synapse stand-in under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text(
        "Made by scripts/demo: everything in this directory belongs to the demo; `scripts/demo --clean` removes it.\n"
    )
    salt_dir = root / "salt"
    (salt_dir / "pillar").mkdir(parents=True, exist_ok=True)
    (salt_dir / "minion").write_text(yaml.safe_dump(minion_config(root)))
    user, group = account()
    pillar = yaml.safe_load((REPO / "pillar.example").read_text())
    _merge(pillar["mas"], overrides(str(root), user, group))
    (salt_dir / "pillar" / "mas.sls").write_text(
        "# The demo's pillar: pillar.example (placeholder secrets only) with every path under the demo root.\n"
        + yaml.safe_dump(pillar)
    )
    (salt_dir / "pillar" / "top.sls").write_text(yaml.safe_dump({"base": {"*": ["mas"]}}))
    homeserver = root / "etc" / "matrix-synapse" / "homeserver.yaml"
    if not homeserver.exists():
        homeserver.parent.mkdir(parents=True, exist_ok=True)
        homeserver.write_text(
            "# A stand-in of Synapse's config for the demo (no Synapse runs).\n" + yaml.safe_dump(HOMESERVER_YAML)
        )
    return user, group


def salt_call(root):
    """The ``salt-call`` command line against the demo's config (what ``scripts/salt-call`` runs)."""
    return [str(pathlib.Path(sys.executable).with_name("salt-call")), "-c", str(root / "salt")]


def rendered(root):
    """The files the formula wrote under ``root`` (not the demo's own: Salt's, the marker, the Synapse stand-in)."""
    own = {root / MARKER, root / "etc" / "matrix-synapse" / "homeserver.yaml"}
    return sorted(p for p in root.rglob("*") if p.is_file() and root / "salt" not in p.parents and p not in own)


def clean(root):
    """Remove the demo root (only one that the demo made)."""
    if not root.exists():
        print(f"Nothing to remove: {root} does not exist.")
        return 0
    if not (root / MARKER).is_file():
        print(f"{root} was not made by scripts/demo (no {MARKER} in it): not removing it.", file=sys.stderr)
        return 1
    shutil.rmtree(root)
    print(f"Removed {root}: everything the demo made (.venv is kept: scripts/test uses it too).")
    return 0


def main(argv):
    parser = argparse.ArgumentParser(prog="scripts/demo", description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--clean", action="store_true", help="remove the demo root and everything in it")
    parser.add_argument("root", nargs="?", default=str(DEFAULT_ROOT), help="the demo root (default ./demo-root)")
    args = parser.parse_args(argv[1:])
    root = pathlib.Path(args.root).resolve()
    if args.clean:
        return clean(root)
    if os.geteuid() != 0:
        print("The demo sets owners and modes as the formula does on a server: run it as root.", file=sys.stderr)
        return 1
    if root.exists() and any(root.iterdir()) and not (root / MARKER).is_file():
        print(f"{root} is not empty and was not made by scripts/demo: choose another directory.", file=sys.stderr)
        return 1
    user, group = prepare(root)
    print(f"Demo root: {root}. Service account: {user}:{group}, an existing account (the demo creates none).")
    call = salt_call(root)
    # Salt 3008 on Python 3.11 warns about its own use of `crypt`: noise here
    env = dict(os.environ, PYTHONWARNINGS="ignore::DeprecationWarning")
    # state.apply alone does not sync the formula's _modules/_states
    sync = subprocess.run(call + ["saltutil.sync_all"], capture_output=True, text=True, check=False, env=env)
    if sync.returncode != 0:
        print(sync.stdout + sync.stderr, file=sys.stderr)
        return sync.returncode
    proc = subprocess.run(
        call + ["state.apply", "mas", "--state-output=terse", "--retcode-passthrough"], check=False, env=env
    )
    if proc.returncode != 0:
        return proc.returncode
    print(f"\nFiles the mas formula rendered under {root}:")
    for path in rendered(root):
        info = path.stat()
        owner = f"{pwd.getpwuid(info.st_uid).pw_name}:{grp.getgrgid(info.st_gid).gr_name}"
        print(f"  {oct(info.st_mode & 0o777)[2:]} {owner:<12} {path.relative_to(root)}")
    print(
        "Secret files (secrets/, keys/) are 0600 and owned by the service account; config.yaml holds none.\n"
        "The demo's pillar (salt/pillar/mas.sls) holds pillar.example's placeholder secrets only.\n"
    )
    prefix = "" if root == DEFAULT_ROOT else f"MAS_DEMO_ROOT={root} "
    print(
        f"Try the operator commands on it, e.g. `{prefix}scripts/salt-call mas_syn2mas.status` (README, Quick start)."
    )
    print(f"Remove it: `scripts/demo --clean{'' if root == DEFAULT_ROOT else ' ' + str(root)}`.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
