"""Synapse's configuration as Synapse loads it: its files (and the ``*.yaml`` of its drop-in directory) read and merged, later files winning whole top-level sections.

Only read, never written: the formula's modules read it for the conflict
rules, Synapse's pepper, its database and its secrets (to scrub them).
"""

import os

import salt.utils.files
import salt.utils.yaml
from salt.exceptions import CommandExecutionError

DEFAULT_FILE = "/etc/matrix-synapse/homeserver.yaml"
EXTRA_ORIGIN = "pillar mas:synapse:extra_config"


def files(config_files, config_dir, exclude=()):
    """The files Synapse loads: ``config_files`` (default :data:`DEFAULT_FILE`), then the ``*.yaml`` of
    ``config_dir`` in sorted order, without ``exclude``."""
    found = list(config_files or []) or [DEFAULT_FILE]
    if config_dir and os.path.isdir(config_dir):
        for entry in sorted(os.listdir(config_dir)):
            path = os.path.join(config_dir, entry)
            if entry.endswith(".yaml") and os.path.isfile(path) and path not in found:
                found.append(path)
    exclude = set(exclude or [])
    return [f for f in found if f not in exclude]


def read(config_files, config_dir, extra_config=None, exclude=()):
    """``{"config": <merged mapping>, "origins": {<top-level key>: <file>}, "files": [<files read>]}`` of the files
    that exist, ``extra_config`` (Synapse settings Salt cannot see in files) merged last; unmasked."""
    merged, origins, read_files = {}, {}, []
    for path in files(config_files, config_dir, exclude):
        if not os.path.isfile(path):
            continue
        try:
            with salt.utils.files.fopen(path, "r") as handle:
                content = salt.utils.yaml.safe_load(handle) or {}
        except (OSError, salt.utils.yaml.YAMLError) as exc:
            raise CommandExecutionError(f"Cannot read the Synapse config file {path}: {exc}") from exc
        if not isinstance(content, dict):
            raise CommandExecutionError(f"The Synapse config file {path} is not a YAML mapping")
        read_files.append(path)
        for key in content:
            origins[key] = path
        merged.update(content)
    for key, value in (extra_config or {}).items():
        origins[key] = EXTRA_ORIGIN
        merged[key] = value
    return {"config": merged, "origins": origins, "files": read_files}
