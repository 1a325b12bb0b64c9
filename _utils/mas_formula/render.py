"""The formula's templates: found TOFS-style, rendered once with Jinja and Salt's filters, and told apart from files the formula did not write by its banner.

* :func:`candidates`: the ``source`` list of a template as the
  template-formula's ``files_switch`` builds it (state ID, grain values,
  ``default``; ``mas:tofs:*``).
* :func:`environment` and :func:`render`: one sandboxed Jinja environment per
  run with Salt's filters, its bytecode cached under the minion's cachedir;
  templates are read from ``file_roots`` directly when masterless (cheaper), else
  through the file server (a master, gitfs).
* :data:`BANNER` and :func:`managed_by_formula`: what ``mas.clean`` may remove.
"""

import os
import stat

import jinja2
import jinja2.sandbox
import salt.utils.files
import salt.utils.jinja
from salt.exceptions import CommandExecutionError
from salt.utils.decorators.jinja import JinjaFilter

from mas_formula import grammar

BANNER = "File managed by Salt (mas formula)"


def local_file(opts, path):
    """Masterless: the file ``path`` (relative to a file root) in this saltenv's file_roots, else None."""
    if opts.get("file_client") != "local":
        return None
    for root in (opts.get("file_roots") or {}).get(opts.get("saltenv") or "base", []):
        candidate = os.path.join(root, path)
        if os.path.isfile(candidate):
            return candidate
    return None


def candidates(tofs, grains, opts, source_files, lookup, tplroot):
    """The ``salt://`` sources of a template for state ``lookup``, the first that exists winning; masterless only
    the first found in file_roots (all of them when none is there, so that the error names what was looked for)."""
    prefix = tofs["path_prefix"] or tplroot
    names = list(tofs["source_files"].get(lookup, [])) + list(source_files)
    dirs = [lookup]
    for grain in tofs["files_switch"]:
        value = grains.get(grain)
        if isinstance(value, str) and grammar.TOFS_NAME.fullmatch(value) and value not in dirs:
            dirs.append(value)
    dirs.append("default")
    found = [f"{prefix}/{tofs['dirs']['files']}/{directory}/{name}" for directory in dirs for name in names]
    # masterless: keep only the first candidate that exists in file_roots, so that it is looked up once
    # instead of asking the file server for every override that is not there
    local = [path for path in found if local_file(opts, path)]
    return [f"salt://{path}" for path in (local[:1] or found)]


def environment(opts, get_file_str):
    """A sandboxed Jinja environment with Salt's template filters (``yaml``, ``json``, ``quote``, ...) reading
    ``salt://`` templates (``get_file_str``: Salt's ``cp.get_file_str`` for a master or another backend)."""

    def text(source):
        local = local_file(opts, source[len("salt://") :])
        if local:
            with salt.utils.files.fopen(local, "r") as handle:
                return handle.read()
        return get_file_str(source) or None

    def source(name):
        found = text(name)
        return None if found is None else (found, None, lambda: False)

    cache_dir = os.path.join(opts.get("cachedir") or "/var/cache/salt/minion", "mas-jinja")
    os.makedirs(cache_dir, mode=0o700, exist_ok=True)
    env = jinja2.sandbox.SandboxedEnvironment(
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        extensions=["jinja2.ext.do", "jinja2.ext.loopcontrols", salt.utils.jinja.SerializerExtension],
        # compiled templates are kept between runs (keyed on the template's text)
        bytecode_cache=jinja2.FileSystemBytecodeCache(cache_dir),
        loader=jinja2.FunctionLoader(source),
    )
    env.filters.update(JinjaFilter.salt_jinja_filters)
    return env


def render(env, sources, variables):
    """The first of ``sources`` that exists, rendered with ``variables``."""
    for name in sources:
        try:
            template = env.get_template(name)
        except jinja2.TemplateNotFound:
            continue
        return template.render(**variables)
    raise CommandExecutionError(f"none of the templates {', '.join(sources)} exists")


def managed_by_formula(path):
    """True when ``path`` is a regular file carrying :data:`BANNER` in its first 4 KiB."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        with salt.utils.files.fopen(path, "r") as handle:
            return BANNER in handle.read(4096)
    except (OSError, UnicodeDecodeError):
        return False
