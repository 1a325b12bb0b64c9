"""The double's ``share/`` directory and release tarball, in the layout of MAS's releases.

An upstream release tarball ``mas-cli-<arch>-linux.tar.gz`` (assembled by
``.github/workflows/build.yaml``, job ``assemble-archives``: ``tar -czvf ...
--owner=0 --group=0 -C dist/<arch>/ .``) holds, from its root ``./``::

    mas-cli                 the binary (mode 0755)
    LICENSE
    share/policy.wasm       the compiled OPA policy
    share/manifest.json     the frontend's Vite manifest
    share/assets/           the frontend build
    share/templates/        the HTML/email templates
    share/translations/     one <locale>.json per language

A release build (``--features dist``) looks for ``share/`` relative to its
working directory unless config.yaml names the paths.  :func:`build` writes a
stand-in ``share/`` (a minimal valid WASM module, an empty manifest, one
template, one translation) and :func:`release_tarball` the whole tarball, whose
``mas-cli`` runs the double with ``MAS_DOUBLE_VERSION`` set to the tarball's version.
"""

from __future__ import annotations

import io
import json
import shlex
import tarfile
import time
from pathlib import Path

from mas_double import MAS_CLI

#: The smallest valid WebAssembly module (magic + version 1): what the double
#: checks ``policy.wasm_module`` for.
WASM_HEADER = b"\0asm\x01\0\0\0"

#: What ``share/`` holds in a release (files and directories).
SHARE_LAYOUT = ("policy.wasm", "manifest.json", "assets/", "templates/", "translations/")


def _share_files() -> dict[str, bytes]:
    return {
        "policy.wasm": WASM_HEADER,
        "manifest.json": b"{}\n",
        "assets/.keep": b"",
        "templates/base.html": b"<!DOCTYPE html>{% block content %}{% endblock content %}\n",
        "translations/en.json": json.dumps({"app": {"name": "MAS double"}}).encode() + b"\n",
    }


def build(target: Path) -> Path:
    """Write the double's ``share/`` at ``target`` (created); returns ``target``."""
    for name, data in _share_files().items():
        path = target / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return target


def cli_script(version: str) -> bytes:
    """The tarball's ``mas-cli``: runs the double (by absolute path) as MAS ``version``."""
    return (
        "#!/bin/sh\n"
        f"# mas-cli of the MAS test double, release {version} (test/mas_double/share.py)\n"
        f"MAS_DOUBLE_VERSION={shlex.quote(version)}\n"
        "export MAS_DOUBLE_VERSION\n"
        f'exec {shlex.quote(str(MAS_CLI))} "$@"\n'
    ).encode()


def release_tarball(path: Path, version: str) -> Path:
    """Write ``mas-cli-<arch>-linux.tar.gz`` of the double's release ``version`` at ``path``.

    Same layout, modes and owners as upstream's (entries under ``./``, root-owned).
    """
    entries: list[tuple[str, bytes | None, int]] = [("./", None, 0o755), ("./share/", None, 0o755)]
    entries.append(("./mas-cli", cli_script(version), 0o755))
    entries.append(("./LICENSE", b"MAS test double: stand-in for the AGPL-3.0 LICENSE of a release\n", 0o644))
    directories = set()
    for name, data in _share_files().items():
        parent = str(Path(name).parent)
        if parent != "." and parent not in directories:
            directories.add(parent)
            entries.append((f"./share/{parent}/", None, 0o755))
        entries.append((f"./share/{name}", data, 0o644))
    now = int(time.time())
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data, mode in entries:
            info = tarfile.TarInfo(name.rstrip("/") if name != "./" else ".")
            info.mode, info.uid, info.gid, info.uname, info.gname, info.mtime = mode, 0, 0, "root", "root", now
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path
