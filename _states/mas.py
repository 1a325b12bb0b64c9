"""
States of the ``mas`` formula's runtime: the MAS container image (docker) and MAS's release tarball (binary).

:depends: the ``mas`` execution module of this formula
"""

import os
import re

from salt.exceptions import CommandExecutionError, SaltInvocationError

__virtualname__ = "mas"


def __virtual__():
    if "mas.image_present" in __salt__:
        return __virtualname__
    return (False, "The mas state module needs the mas execution module (run saltutil.sync_all)")


def _ret(name):
    return {"name": name, "result": True, "comment": "", "changes": {}}


def image_present(name, command="/usr/bin/docker"):
    """
    Ensure the MAS container image is present (pulled when missing).

    name
        The image reference (``mas:image``).
    command
        The docker CLI (``mas:service:docker:command``).

    .. code-block:: yaml

        mas-service-running-mas-image_present:
          mas.image_present:
            - name: ghcr.io/element-hq/matrix-authentication-service:1.23.0
    """
    ret = _ret(name)
    try:
        state = __salt__["mas.image_present"](name, command, test=__opts__["test"])
    except (CommandExecutionError, SaltInvocationError) as exc:
        ret["result"] = False
        ret["comment"] = f"Image {name}: {exc}"
        return ret
    if state["present_before"]:
        ret["comment"] = f"Image {name} is already present"
        return ret
    ret["changes"] = {"image": {"old": None, "new": name}}
    if __opts__["test"]:
        ret["result"] = None
        ret["comment"] = f"Image {name} would be pulled"
    else:
        ret["comment"] = f"Image {name} pulled"
    return ret


_HASH = re.compile(r"(?:(sha256|sha512)=)?([0-9a-fA-F]{64}|[0-9a-fA-F]{128})")


def release_extracted(name, source, source_hash):
    """
    Ensure MAS's release tarball (upstream's ``mas-cli-<arch>-linux.tar.gz``:
    ``./mas-cli``, ``./share/``) is extracted into ``name``, a directory of its
    own per tarball. The tarball is fetched and its hash compared with
    ``source_hash`` first: a tarball that does not match fails the state
    naming ``mas:binary:source_hash`` and nothing is extracted, so the states
    that point MAS at the release (config.yaml, the unit, the wrappers, which
    require this one) replace nothing. Already extracted: no change.

    name
        The release directory (``<mas:base_path>/dist/mas-cli-<hash prefix>``).
    source
        The tarball's URL (``mas:binary:source``: https://, salt://, file://) or path.
    source_hash
        ``sha256=<hex>`` (or ``sha512=<hex>``, or bare hex) of the tarball (``mas:binary:source_hash``).

    .. code-block:: yaml

        mas-install-binary-mas-release_extracted:
          mas.release_extracted:
            - name: /matrix/matrix-authentication-service/dist/mas-cli-785787ade17b49c0
            - source: https://github.com/element-hq/matrix-authentication-service/releases/download/v1.23.0/mas-cli-x86_64-linux.tar.gz
            - source_hash: sha256=785787ade17b49c068463dc06ce89e47b0004c18b52422c38991c27bdef1a0e1
    """
    ret = _ret(name)
    binary = os.path.join(name, "mas-cli")
    if os.path.isfile(binary):
        ret["comment"] = f"MAS's release is already extracted in {name}"
        return ret
    match = _HASH.fullmatch(source_hash or "")
    if not match:
        ret["result"] = False
        ret["comment"] = (
            f"mas:binary:source_hash: must be sha256=<64 hex digits> (or sha512=<128>), not {source_hash!r}"
        )
        return ret
    form = match.group(1) or ("sha256" if len(match.group(2)) == 64 else "sha512")
    want = match.group(2).lower()
    ret["changes"] = {"release": {"old": None, "new": name}}
    if __opts__["test"]:
        ret["result"] = None
        ret["comment"] = f"MAS's release {source} would be fetched, checked against its {form} and extracted in {name}"
        return ret
    local = source[len("file://") :] if source.startswith("file:///") else source
    try:
        cached = local if os.path.isabs(local) else __salt__["cp.cache_file"](source)
    except (CommandExecutionError, SaltInvocationError, OSError) as exc:
        cached, why = None, str(exc)
    else:
        why = "not found"
    if not cached or not os.path.isfile(cached):
        ret.update(
            result=False, changes={}, comment=f"mas:binary:source: cannot fetch {source} ({why}): nothing changed"
        )
        return ret
    got = __salt__["file.get_hash"](cached, form)
    if got != want:
        ret.update(
            result=False,
            changes={},
            comment=(
                f"mas:binary:source_hash: {source} has {form} {got}, not {want}: nothing was extracted or replaced"
                " (MAS keeps its current release). Check the tarball and its hash"
            ),
        )
        return ret
    sub = __states__["archive.extracted"](
        name,
        source=cached,
        source_hash=f"{form}={want}",
        archive_format="tar",
        # upstream's tarball holds ./mas-cli, ./share/ and ./LICENSE at its root
        enforce_toplevel=False,
        user="root",
        group="root",
        if_missing=binary,
    )
    if not sub["result"] or not os.path.isfile(binary):
        ret.update(
            result=False,
            changes=sub["changes"],
            comment=f"mas:binary:source: {source} did not extract into {name} with a mas-cli: {sub['comment']}",
        )
        return ret
    ret["comment"] = f"MAS's release {source} ({form} checked) extracted in {name}"
    return ret
