#!py
"""Secrets and keys are only removed with mas:clean:purge.

mas.install.clean then removes them with the rest of what the formula made
(mas_clean.purged). Losing the encryption secret or the signing keys by
accident must be hard.
"""

from salt.exceptions import SaltInvocationError


def run():
    try:
        mas = __salt__["mas.mapdata"](refuse_foreign=True)
    except SaltInvocationError as exc:  # the pillar's error, without the loader's frames around it
        raise SaltInvocationError(str(exc)) from None
    paths = mas["paths"]
    kept = f"Secrets under {paths['secrets_dir']} and {paths['keys_dir']} are kept unless mas:clean:purge is true"
    return {"mas-secrets-clean-test-nop": {"test.nop": [{"name": kept}]}}
