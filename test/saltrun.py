"""Run the real ``salt-call --local`` against the formula, for the tests.

A :class:`SaltMinion` is a throwaway masterless minion: its own config dir,
cache and pillar under a temporary directory, ``file_roots`` at the checkout.
"""

import json
import os
import pathlib
import subprocess
import sys

import yaml

from mas_demo import link_formula

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
#: The SLS files that ask the MAS minion while they render (mas_syn2mas.verdict through the master): they render on a
#: master only, so the render tests of every SLS on a masterless minion leave them out (their plans are unit-tested
#: in test_orch.py and run for real in test_several_hosts*.py).
RENDERED_ON_A_MASTER = ("mas/orch/delegate.sls", "mas/orch/migrate.sls")
SALT_CALL = str(pathlib.Path(sys.executable).with_name("salt-call"))


class SaltResult:
    """The outcome of one salt-call: return code, parsed JSON, raw output."""

    def __init__(self, proc):
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        try:
            self.data = json.loads(proc.stdout)["local"] if proc.stdout.strip() else None
        except (ValueError, KeyError, TypeError):
            self.data = None

    @property
    def states(self):
        """The state results (a dict keyed by Salt's state keys), or {}."""
        return self.data if isinstance(self.data, dict) else {}

    def by_id(self, state_id):
        for value in self.states.values():
            if value.get("__id__") == state_id:
                return value
        raise KeyError(f"state {state_id} not in the result: {sorted(v.get('__id__') for v in self.states.values())}")

    @property
    def changed(self):
        """IDs of the states that reported changes."""
        return sorted(v["__id__"] for v in self.states.values() if v.get("changes"))

    @property
    def failed(self):
        return sorted(v["__id__"] for v in self.states.values() if v.get("result") is False)

    @property
    def output(self):
        return self.stdout + self.stderr


class SaltMinion:
    """A masterless minion rooted in ``workdir`` serving the formula at ``repo``."""

    def __init__(self, workdir, repo, extmods=None, extra_config=None, env=None):
        self.workdir = pathlib.Path(workdir)
        #: environment of every salt-call (e.g. a stand-in ``service`` first on ``PATH``)
        self.env = dict(env or {})
        self.confdir = self.workdir / "conf"
        self.pillar_dir = self.workdir / "pillar"
        own = self.workdir / "root" / "var" / "cache" / "salt" / "minion" / "extmods"
        own.parent.mkdir(parents=True, exist_ok=True)
        if extmods:
            # share one synced module tree (salt prefixes root_dir to paths,
            # so a link is the way to point at it)
            own.symlink_to(extmods, target_is_directory=True)
        self.extmods = own
        self.confdir.mkdir(parents=True, exist_ok=True)
        self.pillar_dir.mkdir(parents=True, exist_ok=True)
        config = {
            "id": "mas-test",
            "file_client": "local",
            "root_dir": str(self.workdir / "root"),
            "file_roots": {"base": [str(link_formula(self.workdir / "formula"))]},
            "pillar_roots": {"base": [str(self.pillar_dir)]},
            "log_file": str(self.workdir / "minion.log"),
            "state_output_diff": True,
            **(extra_config or {}),
        }
        (self.confdir / "minion").write_text(yaml.safe_dump(config))
        (self.pillar_dir / "top.sls").write_text(yaml.safe_dump({"base": {"*": ["mas"]}}))
        self.set_pillar({})

    def set_pillar(self, pillar):
        """Write ``pillar`` (the whole pillar, e.g. ``{"mas": {...}}``)."""
        (self.pillar_dir / "mas.sls").write_text(yaml.safe_dump(pillar))

    def run(self, *args, log_level="warning", timeout=300, env=None):
        cmd = [SALT_CALL, "-c", str(self.confdir), "--local", "--out=json", "-l", log_level, *args]
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=dict(os.environ, **self.env, **(env or {})),
        )
        return SaltResult(proc)

    def sync(self):
        res = self.run("saltutil.sync_all")
        if res.returncode != 0:
            raise RuntimeError(f"saltutil.sync_all failed: {res.output}")
        return res

    def apply(self, pillar=None, sls="mas", test=False, log_level="warning"):
        """``state.apply <sls>`` with ``pillar`` (the ``mas`` key's value)."""
        if pillar is not None:
            self.set_pillar({"mas": pillar})
        args = ["state.apply", sls, "--retcode-passthrough"]
        if test:
            args.append("test=True")
        return self.run(*args, log_level=log_level)
