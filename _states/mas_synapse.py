"""
States of the ``mas`` formula's Synapse wiring.

``mas_synapse.dropin`` checks Synapse's configuration *before* writing: while
any setting that Synapse refuses next to MAS is left, it fails listing every
key, the file it comes from and what to do, and changes nothing.

:depends: the ``mas`` and ``mas_synapse`` execution modules of this formula
"""

import logging
import os

from salt.exceptions import CommandExecutionError, SaltInvocationError

log = logging.getLogger(__name__)

__virtualname__ = "mas_synapse"


def __virtual__():
    if "mas_synapse.inspect" in __salt__:
        return __virtualname__
    return (
        False,
        "The mas_synapse state module needs the mas_synapse execution module (run saltutil.sync_all)",
    )


def _ret(name):
    return {"name": name, "result": True, "comment": "", "changes": {}}


def dropin(
    name,
    endpoint,
    secret_path,
    config_files=None,
    config_dir=None,
    migrating=False,
    user="root",
    group="root",
    mode="0644",
):
    """
    Ensure the Synapse drop-in that delegates authentication to MAS.

    Reads and merges the Synapse config files that exist on the minion (and
    pillar ``mas:synapse:extra_config``), leaving this drop-in out, and refuses
    -- without writing anything -- while a conflicting setting is left. Then:

    * ``migrating`` false: the drop-in holds ``matrix_authentication_service``
      (``enabled: true``, ``endpoint``, ``secret_path``) and
      ``experimental_features`` (the operator's own keys plus
      ``msc4108_enabled: true``);
    * ``migrating`` true: the drop-in is removed, so Synapse stays
      authoritative (password login and OIDC keep working).

    name
        The drop-in path, in a directory Synapse loads (``-c <config_dir>``).
    endpoint
        MAS as seen from Synapse (``mas:synapse:mas_endpoint``).
    secret_path
        The shared-secret file readable by Synapse.
    config_files
        Synapse's own config files (default ``/etc/matrix-synapse/homeserver.yaml``).
    config_dir
        The drop-in directory (default: the directory of ``name``).
    migrating
        ``mas:migration_in_progress``.
    user, group, mode
        Owner and mode of the drop-in (it holds no secret).

    .. code-block:: yaml

        mas-synapse-file-mas_synapse-dropin:
          mas_synapse.dropin:
            - name: /etc/matrix-synapse/conf.d/matrix-authentication-service.yaml
            - endpoint: http://localhost:8080/auth/
            - secret_path: /matrix/matrix-authentication-service/synapse/homeserver_secret
            - config_files:
              - /etc/matrix-synapse/homeserver.yaml
    """
    ret = _ret(name)
    try:
        plan = __salt__["mas_synapse.inspect"](
            name,
            endpoint,
            secret_path,
            config_files=config_files,
            config_dir=config_dir or os.path.dirname(name),
            migrating=migrating,
        )
    except (CommandExecutionError, SaltInvocationError) as exc:
        ret["result"] = False
        ret["comment"] = f"Synapse drop-in {name}: {exc}"
        return ret
    if plan["conflicts"]:
        ret["result"] = False
        ret["comment"] = __salt__["mas_synapse.conflict_message"](plan["conflicts"], migrating)
        return ret
    checked = "checked " + (", ".join(plan["files"]) if plan["files"] else "no Synapse config file (none exists)")
    if migrating:
        sub = __states__["file.absent"](name)
        why = "removed while mas:migration_in_progress is true (Synapse stays authoritative)"
    else:
        sub = __states__["file.managed"](
            name,
            contents=plan["text"],
            user=user,
            group=group,
            mode=mode,
            makedirs=True,
        )
        why = "delegates authentication to MAS"
    ret["result"] = sub["result"]
    ret["changes"] = sub["changes"]
    ret["comment"] = f"Synapse drop-in {why}; {checked}. {sub['comment']}"
    return ret


def restarted(name, service, url, timeout=60):
    """
    Restart Synapse because its drop-in or its copy of the shared secret
    changed (use it with ``onchanges`` on those states), and wait until it
    answers again. Under ``test=True`` the restart is predicted (result
    ``None``, the restart as a change) and nothing is touched. A restart that
    fails, or a Synapse that does not answer after ``timeout`` seconds, fails
    the state and says how to recover.

    name
        Any name (the state's label).
    service
        Synapse's service (``mas:synapse:service``).
    url
        Synapse's client API base (``mas:synapse:endpoint``).
    timeout
        Seconds to wait for Synapse to answer.

    .. code-block:: yaml

        mas-synapse-restart-mas_synapse-restarted:
          mas_synapse.restarted:
            - name: synapse
            - service: matrix-synapse
            - url: http://localhost:8008/
            - onchanges:
              - mas_synapse: mas-synapse-file-mas_synapse-dropin
    """
    ret = _ret(name)
    change = {"restarted": {"old": f"{service} running its previous configuration", "new": f"{service} restarted"}}
    if __opts__["test"]:
        ret["result"] = None
        ret["changes"] = change
        ret["comment"] = f"Synapse ({service}) would be restarted: its drop-in or its copy of the shared secret changes"
        return ret
    done = __salt__["mas_synapse.restart"](service, url, timeout)
    recover = f"Read its log (journalctl -u {service}), fix it, then start it: salt-call service.start {service}"
    if not done["restarted"]:
        ret["result"] = False
        ret["comment"] = (
            f"Synapse ({service}) did not restart after its drop-in or secret copy changed: it may be DOWN and "
            f"users cannot log in. {recover}"
        )
        return ret
    ret["changes"] = change
    if not done["answers"]:
        ret["result"] = False
        ret["comment"] = (
            f"Synapse ({service}) was restarted but does not answer at {done['url']} after {done['seconds']} s "
            f"({done['why']}): it may be DOWN and users cannot log in. {recover}"
        )
        return ret
    ret["comment"] = f"Synapse ({service}) restarted and answers at {done['url']} ({done['seconds']} s)"
    return ret
