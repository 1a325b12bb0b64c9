"""
The map of the ``mas`` formula, the ground floor every other module of the formula stands on: the pillar validated and completed, templates, and whose a file is.

Everything the formula decides is made in Python, and the SLS files only fill
values in: :py:func:`mapdata` merges ``parameters/defaults.yaml``, pillar
``mas:lookup`` and pillar ``mas``, and :py:func:`settings` validates the
result (every problem at once, by pillar key), derives the host names, URLs
and every path the formula writes (``paths``: one source for SLS files and
modules alike), lists the secret files and builds ``config.yaml``
(``mas_config``). The map holds no secret value: the SLS only learn *that* a
secret is set and which file holds it. Also here: the MAS runtime the map
describes (:py:func:`runtime_problem`, :py:func:`image_present`), the
templates (:py:func:`files_switch`, :py:func:`render`) and whether a file is
the formula's own (:py:func:`managed_by_formula`, :py:func:`foreign_files`).

This module calls no other module of the formula: the machinery is in the
helpers it imports (``_utils/mas_formula``: ``grammar`` and ``pillar`` for
the pillar, ``rules`` for MAS's own rules on config.yaml, ``layout`` for the
map, ``render``, ``proxy``, ``secretfiles``, ``synapse_config``), which the
other modules use too.

:depends: PyYAML
"""

import copy
import hashlib
import json
import logging
import os

import salt.utils.data
import salt.utils.dictupdate
import salt.utils.files
import salt.utils.jinja
import salt.utils.yaml
from salt.exceptions import CommandExecutionError, SaltInvocationError

import mas_formula

mas_formula.refresh()
from mas_formula import grammar, layout, rules, secretfiles, synapse_config  # noqa: E402
from mas_formula import proxy as proxy_helper  # noqa: E402
from mas_formula import render as render_helper  # noqa: E402  (after the refresh: a synced update is imported anew)

log = logging.getLogger(__name__)

__virtualname__ = "mas"


def __virtual__():
    return __virtualname__


def valid(kind, value):
    """
    Whether ``value`` is a valid value of ``kind`` for the formula: the one
    strict grammar (``re.fullmatch``) of that kind of value, the same that
    the pillar validation applies. Kinds: hostname, host, url, origin, bind,
    path, command, unit, service, image, traefik, name, port, mailbox,
    url_path, file_name.

    kind
        The kind of value.
    value
        The value to check.

    CLI Example:

    .. code-block:: bash

        salt-call mas.valid bind '[::]:8080'
    """
    return grammar.valid(kind, value)


# --------------------------------------------------------------------------
# The map: pillar merged, validated and completed (mas_formula.layout), cached per run
# --------------------------------------------------------------------------


def _synapse_pepper(data):
    """Synapse's ``password_config.pepper`` from its config files (pillar ``mas:synapse:extra_config`` last), or None."""
    syn = data["synapse"]
    try:
        conf = synapse_config.read(syn["config_files"], syn["config_dir"], syn["extra_config"])["config"]
    except CommandExecutionError:
        return None
    pepper = grammar.get(conf, "password_config", "pepper")
    return pepper if grammar.is_set(pepper) else None


def foreign_files(mas=None):
    """
    The files the formula would write that exist and are not its own, as
    refusals naming the pillar key that places each (``[]``: none). A template
    the formula wrote carries its banner (``File managed by Salt (mas
    formula)``); a secret file is its own when ``mas_secret.foreign`` says so.
    ``state.apply mas`` calls this while rendering (every SLS asks the map with
    ``refuse_foreign=True``), so a refusal comes before anything is written:
    the formula never overwrites a file it did not write.

    mas
        The map (default: ``mas.mapdata``).

    CLI Example:

    .. code-block:: bash

        salt-call mas.foreign_files
    """
    mas = mas or mapdata()
    if not mas["enabled"]:
        return []
    paths = mas["paths"]
    problems = []

    def refuse(key, path, why):
        problems.append(
            f"{grammar.key(*key)}: {path} {why}; the formula never overwrites a file it did not write: move it away or"
            " choose another path"
        )

    # only the files of the roles this minion holds (mas:roles): the others are written elsewhere
    role = mas["role"]
    templates, secrets = [], []
    if role["mas"]:
        templates += [
            (("base_path",), paths["config_file"]),
            (("base_path",), paths["mas_cli"]),
            (("base_path",), paths["register_user"]),
            (("service", "unit_dir"), paths["unit"]),
        ]
        secrets += [(("base_path",), e["path"], e["kind"], e["pillar_key"], None) for e in mas["secret_files"]]
    if role["synapse"]:
        templates.append((("synapse", "config_dir"), paths["synapse_dropin"]))
        own = mas["synapse_secret"]
        secrets.append(
            (("synapse", "secret_path"), paths["synapse_secret"], own["kind"], own["pillar_key"], own["source"])
        )
    proxy = proxy_helper.settings(mas)
    keys = {"snippet": "snippet_path", "public-snippet": "public_snippet_path", "config": "config_path"}
    for entry in proxy["files"] if role["proxy"] else []:
        templates.append((("proxy", proxy["type"], keys[entry["name"]]), entry["path"]))
    if proxy["labels"] and role["mas"]:
        templates.append((("base_path",), paths["labels_file"]))
    for key, path in templates:
        if os.path.lexists(path) and not managed_by_formula(path):
            refuse(key, path, f"exists without the line '{BANNER}'")
    owner = layout.secret_owner(paths)
    for key, path, kind, pillar_key, source in secrets:
        if not os.path.lexists(path):
            continue
        value = (
            salt.utils.data.traverse_dict_and_list(__pillar__, pillar_key, None, delimiter=":") if pillar_key else None
        )
        try:
            wanted = secretfiles.wanted(kind, value if grammar.is_set(value) else None, pillar_key, source)
        except CommandExecutionError:
            wanted = None
        why = secretfiles.foreign(path, owner, wanted)
        if why:
            refuse(key, path, why)
    return problems


def _map():
    """The map of this run, shared and read-only: for this module's own lookups (no copy)."""
    key = _cache_key() + ":shared"
    if key not in __context__:
        mapdata()
    return __context__[key]


def _cache_key():
    pillar = salt.utils.data.traverse_dict_and_list(__pillar__, grammar.PILLAR_ROOT, {}) or {}
    return "mas.mapdata:" + hashlib.sha256(json.dumps(pillar, sort_keys=True, default=str).encode()).hexdigest()


def mapdata(defaults=None, refuse_foreign=False):
    """
    The formula's map: ``parameters/defaults.yaml`` < pillar ``mas:lookup`` <
    pillar ``mas``, validated and completed by :py:func:`settings`. This is
    what every SLS of the formula (and ``mas/map.jinja``) works from, as do
    the execution functions (``mas_user.register``, ``mas_doctor.run``, ...).

    defaults
        The ``values`` of ``parameters/defaults.yaml``; read from
        ``salt://mas/parameters/defaults.yaml`` when omitted (and then
        computed once per run).
    refuse_foreign
        Also refuse, naming the pillar key, a file the formula would write
        that exists and is not its own (:py:func:`foreign_files`); what
        the SLS (and ``mas/map.jinja``) ask while they render.

    CLI Example:

    .. code-block:: bash

        salt-call mas.mapdata
    """
    pillar = salt.utils.data.traverse_dict_and_list(__pillar__, grammar.PILLAR_ROOT, {}) or {}
    if not isinstance(pillar, dict):
        raise SaltInvocationError(f"the pillar key '{grammar.PILLAR_ROOT}' must be a mapping")
    # every SLS of a run asks for the same map: compute it once per pillar
    cache_key = _cache_key()
    if defaults is None and cache_key in __context__:
        result = json.loads(__context__[cache_key])
        if refuse_foreign and cache_key + ":foreign-checked" not in __context__:
            _refuse_foreign(result)
            __context__[cache_key + ":foreign-checked"] = True
        return result
    if defaults is None:
        defaults = _defaults()
    pillar = copy.deepcopy(dict(pillar))
    lookup = pillar.pop("lookup", None) or {}
    misplaced = [":".join(path) for path, _ in layout.PILLAR_SECRETS if grammar.get(lookup, *path) is not None]
    misplaced += [key for key in ("users", "upstream_oauth2_providers") if key in lookup]
    problems = [f"mas:lookup:{key}: secrets belong under mas:{key}, not mas:lookup" for key in misplaced]
    if isinstance(lookup.get("config"), dict):
        problems += rules.inline_secrets(lookup["config"], ("lookup", "config"))
    if problems:
        raise SaltInvocationError(grammar.INVALID + "\n- ".join(problems))
    merged = salt.utils.dictupdate.update(copy.deepcopy(dict(defaults)), copy.deepcopy(dict(lookup)), merge_lists=False)
    result = settings(salt.utils.dictupdate.update(merged, pillar, merge_lists=False), defaults)
    __context__[cache_key] = json.dumps(result, default=str)
    __context__[cache_key + ":shared"] = json.loads(__context__[cache_key])
    result = json.loads(__context__[cache_key])
    if refuse_foreign:
        # once per run: the first SLS to render refuses before anything is written
        _refuse_foreign(result)
        __context__[cache_key + ":foreign-checked"] = True
    return result


def _refuse_foreign(mas):
    problems = foreign_files(mas)
    if problems:
        raise SaltInvocationError(grammar.INVALID + "\n- ".join(problems))


def _defaults():
    """The ``values`` of ``parameters/defaults.yaml``, through the file server (once per run)."""
    if "mas.defaults" not in __context__:
        text = __salt__["cp.get_file_str"](f"salt://{grammar.PILLAR_ROOT}/parameters/defaults.yaml")
        if not text:
            raise CommandExecutionError(
                f"cannot read salt://{grammar.PILLAR_ROOT}/parameters/defaults.yaml: is the formula in file_roots?"
            )
        __context__["mas.defaults"] = salt.utils.yaml.safe_load(text)["values"]
    return copy.deepcopy(__context__["mas.defaults"])


def settings(data, defaults=None):
    """
    Validate pillar data of the formula and return the complete map (what
    :py:func:`mapdata` does with the pillar, for any data: e.g. to check a
    pillar before it is deployed).

    ``data`` is merged over ``parameters/defaults.yaml``. Raises
    ``SaltInvocationError`` listing every problem by pillar key. The returned
    map holds no secret value; it adds ``hostname``, ``public_base``,
    ``paths``, ``secret_files``, ``api``, ``mas_config`` (the content of
    MAS's ``config.yaml``) and ``docker_mounts`` (with the docker runtime,
    the host paths outside ``<base_path>/config`` that MAS reads, which
    ``bin/mas-cli`` mounts read-only).

    data
        Pillar data of the formula (the value of the ``mas`` key).
    defaults
        The defaults to merge it over (default: ``parameters/defaults.yaml``).

    CLI Example:

    .. code-block:: bash

        salt-call mas.settings "{enabled: true, server_name: example.com}"
    """
    if not isinstance(data, dict):
        raise SaltInvocationError("mas: the pillar key 'mas' must be a mapping")
    base = copy.deepcopy(defaults) if defaults is not None else _defaults()
    return layout.settings(data, base, _synapse_pepper)


# --------------------------------------------------------------------------
# Container image (docker runtime)
# --------------------------------------------------------------------------

#: What every command that needs docker says when it is not there (the docker
#: branch of ``mas/files/default/mas-cli.sh.jinja`` prints the same line).
DOCKER_MISSING = "mas:runtime is docker but {command} is missing: install Docker or set mas:runtime: binary"
BINARY_MISSING = "mas:runtime is binary but {command} is missing: install mas-cli there or set mas:binary"


def runtime_problem(mas=None):
    """
    Why ``bin/mas-cli`` cannot run on this minion, in one line for the
    operator, or an empty string when nothing is known to be wrong: with the
    docker runtime, the docker CLI (``mas:service:docker:command``) missing;
    with the binary runtime, ``mas-cli`` (``mas:binary``) missing.
    The formula's functions that run ``mas-cli`` (doctor, syn2mas) or need MAS
    running (users) check it first, instead of a shell's "exec: not found".

    mas
        The formula's map (default: :py:func:`mapdata`).

    CLI Example:

    .. code-block:: bash

        salt-call mas.runtime_problem
    """
    mas = mas or mapdata()
    if mas["runtime"] == "docker":
        command = mas["service"]["docker"]["command"]
        if not __salt__["cmd.has_exec"](command):
            return DOCKER_MISSING.format(command=command)
    elif not __salt__["cmd.has_exec"](mas["paths"]["mas_binary"]):
        return BINARY_MISSING.format(command=mas["paths"]["mas_binary"])
    return ""


def image_present(image, command="/usr/bin/docker", test=False):
    """
    Make sure the MAS container image is on the minion: ``docker image
    inspect``, and ``docker pull`` when it is missing (argument lists, no
    shell). Returns ``{"present_before": bool, "pulled": bool}``; with
    ``test`` nothing is pulled.

    image
        The image reference (``mas:image``).
    command
        The docker CLI (``mas:service:docker:command``).

    CLI Example:

    .. code-block:: bash

        salt-call mas.image_present ghcr.io/element-hq/matrix-authentication-service:1.23.0
    """
    if not __salt__["cmd.has_exec"](command):
        raise CommandExecutionError(DOCKER_MISSING.format(command=command))
    inspect = __salt__["cmd.run_all"](
        [command, "image", "inspect", image], python_shell=False, output_loglevel="quiet", ignore_retcode=True
    )
    if inspect["retcode"] == 0:
        return {"present_before": True, "pulled": False}
    if test:
        return {"present_before": False, "pulled": False}
    pull = __salt__["cmd.run_all"]([command, "pull", image], python_shell=False, ignore_retcode=True)
    if pull["retcode"] != 0:
        raise CommandExecutionError(f"docker pull {image} failed: {(pull['stderr'] or pull['stdout']).strip()[-500:]}")
    return {"present_before": False, "pulled": True}


def files_switch(source_files, lookup, tplroot=grammar.PILLAR_ROOT):
    """
    The ``source`` list of a template, TOFS-style as the template-formula's
    ``files_switch`` builds it (used by the SLS files while they render): for
    each directory ``<lookup>`` (the state ID), the values of the grains in
    ``mas:tofs:files_switch`` (default ``id``, ``os_family``) and ``default``,
    each file of ``mas:tofs:source_files:<lookup>`` then of ``source_files``,
    under ``salt://<mas:tofs:path_prefix>/<mas:tofs:dirs:files>/``. The first
    that exists wins, so an operator overrides a template by placing a file
    in ``mas/files/<state id>/`` or naming another one in pillar. Masterless,
    only the first candidate found in ``file_roots`` is returned (all of them
    when none is there, so that ``file.managed`` names what it looked for).

    source_files
        The formula's file names for the state (e.g. ``['config.yaml.jinja']``).
    lookup
        The state ID.
    tplroot
        The formula's directory (default ``mas``).

    CLI Example:

    .. code-block:: bash

        salt-call mas.files_switch "['config.yaml.jinja']" mas-config-file-file-managed
    """
    return render_helper.candidates(_map()["tofs"], __grains__, __opts__, source_files, lookup, tplroot)


def account(user=None, group=None):
    """
    Whether the service account and its group exist on the minion:
    ``{"user": bool, "group": bool}`` (``mas.install`` creates what is missing
    and leaves what exists as it is). Cheap: no group enumeration.

    user, group
        The names (default: ``mas:user`` and ``mas:group`` from the map).

    CLI Example:

    .. code-block:: bash

        salt-call mas.account
    """
    import grp  # pylint: disable=import-outside-toplevel
    import pwd  # pylint: disable=import-outside-toplevel

    if user is None or group is None:
        mas = mapdata()
        user, group = user or mas["user"], group or mas["group"]
    found = {}
    for key, name, lookup in (("user", user, pwd.getpwnam), ("group", group, grp.getgrnam)):
        try:
            lookup(name)
            found[key] = True
        except KeyError:
            found[key] = False
    return found


def render(source_files, lookup, context=None, tplroot=grammar.PILLAR_ROOT):
    """
    The text of one of the formula's templates, found TOFS-style
    (:py:func:`files_switch`) and rendered with Jinja and Salt's template
    filters (``yaml``, ``json``, ``quote``, ...). Used by the SLS files while
    they render (``file.managed`` gets the text as ``contents``): one Jinja
    environment for the whole run instead of Salt's template machinery per
    file, which made a no-change run of ``mas`` much slower. A template sees
    ``context`` and ``grains`` (and ``salt``); no pillar (the result is part
    of the rendered SLS).

    source_files
        The formula's file names for the state (e.g. ``['config.yaml.jinja']``).
    lookup
        The state ID.
    context
        The template's variables.
    tplroot
        The formula's directory (default ``mas``).

    CLI Example:

    .. code-block:: bash

        salt-call mas.render "['docker.labels.jinja']" mas-config-file-file-managed-labels "{labels: {a: b}}"
    """
    if "mas.jinja_env" not in __context__:
        __context__["mas.jinja_env"] = render_helper.environment(__opts__, __salt__["cp.get_file_str"])
    sources = files_switch(source_files, lookup, tplroot)
    return render_helper.render(
        __context__["mas.jinja_env"], sources, dict(context or {}, grains=__grains__, salt=__salt__)
    )


BANNER = render_helper.BANNER


def managed_by_formula(path):
    """
    True when ``path`` is a regular file carrying the formula's banner: what
    ``mas.clean`` may remove (files another tool wrote at the same paths, e.g.
    the playbook's, are left alone).

    path
        The file to look at.

    CLI Example:

    .. code-block:: bash

        salt-call mas.managed_by_formula /matrix/matrix-authentication-service/config/config.yaml
    """
    return render_helper.managed_by_formula(path)
