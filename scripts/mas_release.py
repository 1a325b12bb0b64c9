"""The real MAS the tests and benches run: upstream's release tarball beside the project, unpacked once per checksum.

The tarball is ``../shared/mas-release/mas-cli-x86_64-linux.tar.gz`` next to the
checkout (or ``$MAS_RELEASE_DIR/mas-cli-x86_64-linux.tar.gz``), with its sha256
in ``SHA256SUMS`` beside it. It is never copied into the repository:
:func:`unpacked` verifies it and unpacks it into ``$TMPDIR/mas-release-<sha256
prefix>`` (outside the checkout), once; later runs reuse that directory while
the checksum is the same.

Standard library only: ``scripts/test`` runs it with the system ``python3``
before ``.venv`` exists. As a command it prints the unpacked directory (empty
output: no tarball here, and not under ``CI=true``)::

    python3 scripts/mas_release.py
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

TARBALL = "mas-cli-x86_64-linux.tar.gz"
SUMS = "SHA256SUMS"
REPO_ROOT = Path(__file__).resolve().parents[1]


class ReleaseError(RuntimeError):
    """The release is missing, does not match its checksum, or cannot be unpacked."""


@dataclass(frozen=True)
class Release:
    """The verified tarball and where it is unpacked."""

    tarball: Path
    sha256: str
    directory: Path

    @property
    def cli(self) -> Path:
        return self.directory / "mas-cli"

    @property
    def share(self) -> Path:
        return self.directory / "share"


def release_dir() -> Path:
    """Where the tarball and its ``SHA256SUMS`` are (``$MAS_RELEASE_DIR``, default ``../shared/mas-release``)."""
    given = os.environ.get("MAS_RELEASE_DIR")
    return Path(given) if given else REPO_ROOT.parent / "shared" / "mas-release"


def expected_sha256(directory: Path) -> str:
    """The sha256 ``SHA256SUMS`` gives for the tarball."""
    sums = directory / SUMS
    try:
        lines = sums.read_text().splitlines()
    except OSError as exc:
        raise ReleaseError(f"{sums} is missing or unreadable ({exc.strerror}): it holds the tarball's sha256") from None
    for line in lines:
        digest, _, name = line.strip().partition("  ")
        if name.lstrip("*") == TARBALL and len(digest) == 64:
            return digest.lower()
    raise ReleaseError(f"{sums} has no sha256 line for {TARBALL}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verified(directory: Path | None = None) -> tuple[Path, str]:
    """``(tarball, sha256)`` after checking the tarball against ``SHA256SUMS``; raises :class:`ReleaseError`."""
    directory = directory or release_dir()
    tarball = directory / TARBALL
    if not tarball.is_file():
        raise ReleaseError(f"{tarball} is missing (the real MAS: upstream's release tarball, with {SUMS} beside it)")
    want = expected_sha256(directory)
    got = _sha256(tarball)
    if got != want:
        raise ReleaseError(f"{tarball} has sha256 {got}, but {directory / SUMS} says {want}")
    return tarball, got


def unpacked(directory: Path | None = None) -> Release:
    """Verify the tarball and unpack it under ``$TMPDIR/mas-release-<sha256 prefix>`` (once per checksum)."""
    tarball, digest = verified(directory)
    target = Path(tempfile.gettempdir()) / f"mas-release-{digest[:16]}"
    release = Release(tarball, digest, target)
    marker = target / ".complete"
    if marker.is_file() and marker.read_text().strip() == digest and (target / "mas-cli").is_file():
        return release
    staging = Path(tempfile.mkdtemp(prefix=f".mas-release-{digest[:16]}-", dir=target.parent))
    try:
        with tarfile.open(tarball) as archive:
            archive.extractall(staging, filter="data")
        missing = [name for name in ("mas-cli", "share/policy.wasm") if not (staging / name).exists()]
        if missing:
            raise ReleaseError(f"{tarball} lacks {', '.join(missing)}: not upstream's release layout")
        (staging / ".complete").write_text(digest + "\n")
        staging.chmod(0o755)
        shutil.rmtree(target, ignore_errors=True)
        try:
            staging.rename(target)
        except OSError:  # another run unpacked it meanwhile
            if not (target / ".complete").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return release


def main() -> int:
    """Print the unpacked directory; without a tarball print nothing (an error under ``CI=true``)."""
    ci = os.environ.get("CI", "").lower() == "true"
    tarball = release_dir() / TARBALL
    if not tarball.is_file() and not ci:
        print(
            f"scripts/test: no real MAS here ({tarball} is missing): the tests that talk to MAS run against the "
            "MAS double",
            file=sys.stderr,
        )
        return 0
    try:
        print(unpacked().directory)
    except ReleaseError as exc:
        print(f"scripts/test: CI=true needs the real MAS: {exc}" if ci else f"scripts/test: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
