#!mas_py
"""The binary runtime: MAS's release tarball, extracted once per version.

The tarball (mas:binary:source) is fetched and checked against
mas:binary:source_hash, then extracted (Salt's archive.extracted) into a
directory of its own per tarball under base_path/dist/, so a new version lands
beside the old one; the unit and config.yaml then point at it, and the service
restarts once. A tarball that does not match its hash fails here, before
anything that points at the release is replaced. Without a source,
MAS is installed some other way (mas:binary:path and mas:binary:share_dir).
"""

ROLE = "mas"  # mas:roles: elsewhere, the renderer gives one test.nop instead


def run(mas, tplroot):
    states = {"include": [".account"]}
    if mas["paths"]["release_dir"]:
        states["mas-install-binary-file-directory"] = state(
            "file.directory",
            name=mas["paths"]["dist_dir"],
            user="root",
            group="root",
            mode="0755",
            require=[{"file": "mas-install-account-file-directory-base"}],
        )
        states["mas-install-binary-mas-release_extracted"] = state(
            "mas.release_extracted",
            name=mas["paths"]["release_dir"],
            source=mas["binary"]["source"],
            source_hash=mas["binary"]["source_hash"],
            require=[{"file": "mas-install-binary-file-directory"}],
        )
    return states
