"""Benchmark: wall time of a no-change re-apply of ``mas`` against the floor
of a trivial one-file state applied the same way (real salt-call --local),
in the same run, several rounds. Prints medians and the ratio.

Usage (as root): .venv/bin/python bench/reapply.py [ROUNDS]
"""

import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import yaml

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from mas_demo import _merge, link_formula, overrides  # noqa: E402  pylint: disable=wrong-import-position

#: A minion writes the bytecode of the formula's modules once (Salt compiles them into its cachedir); with
#: PYTHONDONTWRITEBYTECODE set, every run would compile them again, which is not what a minion does.
ENV = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}


def main(rounds):
    with tempfile.TemporaryDirectory(prefix="mas-bench-") as tmp:
        tmp = pathlib.Path(tmp)
        (tmp / "pillar").mkdir()
        pillar = yaml.safe_load((REPO / "pillar.example").read_text())
        _merge(pillar["mas"], overrides(str(tmp / "root")))
        pillar["bench_trivial_path"] = str(tmp / "trivial.txt")
        (tmp / "pillar" / "mas.sls").write_text(yaml.safe_dump(pillar))
        (tmp / "pillar" / "top.sls").write_text(yaml.safe_dump({"base": {"*": ["mas"]}}))
        (tmp / "minion").write_text(
            yaml.safe_dump(
                {
                    "id": "bench",
                    "file_client": "local",
                    "root_dir": str(tmp / "salt"),
                    "file_roots": {"base": [str(link_formula(tmp / "formula")), str(REPO / "bench" / "trivial")]},
                    "pillar_roots": {"base": [str(tmp / "pillar")]},
                }
            )
        )
        call = [
            str(pathlib.Path(sys.executable).with_name("salt-call")),
            "-c",
            str(tmp),
            "--local",
            "--out=txt",
            "--retcode-passthrough",
        ]
        subprocess.run(call + ["saltutil.sync_all"], check=True, capture_output=True, env=ENV)
        for sls in ("mas", "trivial"):  # first applies make the changes
            subprocess.run(call + ["state.apply", sls], check=True, capture_output=True, env=ENV)
        times = {"mas": [], "trivial": []}
        cpu = {"mas": [], "trivial": []}
        for _ in range(rounds):
            for sls in ("trivial", "mas"):
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                start = time.perf_counter()
                subprocess.run(call + ["state.apply", sls], check=True, capture_output=True, env=ENV)
                times[sls].append(time.perf_counter() - start)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu[sls].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        med = {sls: statistics.median(values) for sls, values in times.items()}
        cmed = {sls: statistics.median(values) for sls, values in cpu.items()}
        print(f"rounds: {rounds}")
        print(f"trivial one-file state, median: {med['trivial']:.3f} s wall, {cmed['trivial']:.3f} s CPU")
        print(f"mas no-change re-apply, median: {med['mas']:.3f} s wall, {cmed['mas']:.3f} s CPU")
        print(f"ratio (wall): {med['mas'] / med['trivial']:.2f}x (target <= 1.15x)")
        print(f"ratio (CPU):  {cmed['mas'] / cmed['trivial']:.2f}x (less sensitive to other load on the machine)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 7)
