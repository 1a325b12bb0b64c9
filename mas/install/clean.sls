#!mas_py
"""With mas:clean:purge, removes what the formula made under mas:base_path, and only that.

Its files (a banner, its record, the names it reserves in its own directories),
the releases it extracted, then its directories once empty; every other file
stays and the state says which and why (mas_clean.purged). It runs after MAS is
stopped and its config removed, and after the syn2mas rollback guard. The
service account is kept (files elsewhere may still belong to it).
"""

ROLE = "mas"  # mas:roles: elsewhere, the renderer gives one test.nop instead


def run(mas, tplroot):
    after = [tplroot + ".config.clean", tplroot + ".secrets.clean"]
    base = mas["paths"]["base"]
    if mas["clean"]["purge"]:
        return {
            "include": after,
            "mas-install-clean-mas_clean-purged": state(
                "mas_clean.purged", name=base, require=[{"sls": sls} for sls in after]
            ),
        }
    return {
        "include": after,
        "mas-install-clean-test-nop": state(
            "test.nop", name=f"Keeping {base} (secrets, keys, data); set mas:clean:purge to remove it"
        ),
    }
