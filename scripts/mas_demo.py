"""The README quick-start demo: apply the formula masterless with
``pillar.example`` into a local directory (``./demo-root``), no server needed.

Paths are redirected under the demo root and nothing is started: the service
is left unmanaged (no systemd needed), Synapse is not restarted and the proxy
not reloaded. Usage: ``.venv/bin/python scripts/mas_demo.py [DEMO_ROOT]``.
"""

import os
import pathlib
import subprocess
import sys

import yaml

REPO = pathlib.Path(__file__).resolve().parents[1]


FORMULA_DIRS = ("mas", "_modules", "_states")


def link_formula(dest):
    """Make ``dest`` a file root holding only the formula (links to mas/,
    _modules/, _states/), as a formulas directory or gitfs would serve it:
    the checkout's root also holds a virtualenv that Salt's file server would
    otherwise walk on every run."""
    dest = pathlib.Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in FORMULA_DIRS:
        link = dest / name
        if not link.is_symlink():
            link.symlink_to(REPO / name, target_is_directory=True)
    return dest


def overrides(root):
    """Pillar overrides that keep the demo inside ``root``."""
    return {
        "base_path": f"{root}/matrix/matrix-authentication-service",
        "service": {"manage": False, "unit_dir": f"{root}/etc/systemd/system"},
        "synapse": {
            # no Synapse on the demo machine: its account is root here
            "user": "root",
            "group": "root",
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


def main(argv):
    root = pathlib.Path(argv[1] if len(argv) > 1 else "demo-root").resolve()
    salt_dir = root / "salt"
    (salt_dir / "pillar").mkdir(parents=True, exist_ok=True)
    minion = {
        "id": "mas-demo",
        "file_client": "local",
        "root_dir": str(salt_dir / "root"),
        "file_roots": {"base": [str(link_formula(salt_dir / "formula"))]},
        "pillar_roots": {"base": [str(salt_dir / "pillar")]},
    }
    (salt_dir / "minion").write_text(yaml.safe_dump(minion))
    pillar = yaml.safe_load((REPO / "pillar.example").read_text())
    _merge(pillar["mas"], overrides(str(root)))
    (salt_dir / "pillar" / "mas.sls").write_text(yaml.safe_dump(pillar))
    (salt_dir / "pillar" / "top.sls").write_text(yaml.safe_dump({"base": {"*": ["mas"]}}))
    salt_call = [str(pathlib.Path(sys.executable).with_name("salt-call")), "-c", str(salt_dir), "--local"]
    # state.apply alone does not sync the formula's _modules/_states
    sync = subprocess.run(salt_call + ["saltutil.sync_all"], capture_output=True, text=True, check=False)
    if sync.returncode != 0:
        print(sync.stdout + sync.stderr, file=sys.stderr)
        return sync.returncode
    proc = subprocess.run(
        salt_call + ["state.apply", "mas", "--state-output=terse", "--retcode-passthrough"], check=False
    )
    if proc.returncode != 0:
        return proc.returncode
    print(f"\nRendered by the mas formula under {root}:")
    for path in sorted(p for p in root.rglob("*") if p.is_file() and salt_dir not in p.parents):
        print(f"  {oct(path.stat().st_mode & 0o777)}  {path.relative_to(root)}")
    print("Secret files (secrets/, keys/) are 0600 and owned by the service account; config.yaml holds none.")
    return 0


if __name__ == "__main__":
    if os.geteuid() != 0:
        print("The demo creates the service account `mas`: run it as root.", file=sys.stderr)
        sys.exit(1)
    sys.exit(main(sys.argv))
