#!mas_py
"""Secrets and keys are only removed with mas:clean:purge.

mas.install.clean then removes them with the rest of what the formula made
(mas_clean.purged). Losing the encryption secret or the signing keys by
accident must be hard.
"""

ROLE = "mas"  # mas:roles: elsewhere, the renderer gives one test.nop instead


def run(mas, tplroot):
    paths = mas["paths"]
    kept = f"Secrets under {paths['secrets_dir']} and {paths['keys_dir']} are kept unless mas:clean:purge is true"
    return {"mas-secrets-clean-test-nop": state("test.nop", name=kept)}
