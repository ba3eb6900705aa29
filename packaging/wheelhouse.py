#!/usr/bin/env python3
"""Download every file the .deb build needs from PyPI into a wheelhouse, on the host (HTTPS to PyPI does not
work inside the build chroot), checked against the hashes in requirements.lock.

    python3 packaging/wheelhouse.py OUTDIR ARCH PYTHON...   # ARCH: dpkg architecture; PYTHON: 3.11 3.13 ...

Binary wheels for each given CPython (every supported Debian release's python3, from packaging/releases) on
manylinux (glibc <= 2.36, Debian 12's, the oldest supported) for every pin except psycopg2-binary and sdnotify,
whose sdists are taken instead (psycopg2 is compiled in the chroot against Debian's libpq;
sdnotify has no wheel). The build tools (setuptools, wheel, pip) are Debian's, from Build-Depends, so no
unpinned file enters. Tags are given explicitly: the host's own interpreter (a pyenv Python here) does not
decide what is downloaded. OUTDIR is written atomically (OUTDIR.tmp, then renamed) and reused when complete.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
FROM_SDIST = ("psycopg2-binary", "sdnotify")
ARCHES = {"amd64": "x86_64", "arm64": "aarch64"}


def blocks(text: str) -> dict[str, str]:
    """{normalized name: the pin with its hash lines} of a pip-compile --generate-hashes file."""
    found: dict[str, str] = {}
    for block in re.findall(r"^[A-Za-z0-9].*?(?=^[A-Za-z0-9#]|\Z)", text, re.M | re.S):
        name = re.sub(r"[-_.]+", "-", block.split("==", 1)[0]).lower()
        found[name] = block.rstrip() + "\n"
    return found


def pip(*args: str) -> None:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args]
    print("+ " + " ".join(command), flush=True)
    subprocess.run(command, check=True)


def main(argv: list[str]) -> int:
    if len(argv) < 4:
        raise SystemExit(__doc__)
    out = Path(argv[1]).resolve()
    arch = ARCHES[argv[2]]
    pythons = argv[3:]
    if (out / "SHA256SUMS").exists():
        return 0
    pins = blocks(LOCK.read_text())
    missing = [name for name in FROM_SDIST if name not in pins]
    if missing:
        raise SystemExit(f"wheelhouse: {missing} not pinned in {LOCK}")
    tmp = Path(f"{out}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as scratch:
        binary = Path(scratch) / "binary.txt"
        binary.write_text("".join(v for k, v in pins.items() if k not in FROM_SDIST))
        source = Path(scratch) / "source.txt"
        source.write_text("".join(pins[k] for k in FROM_SDIST))
        platforms = [f"--platform=manylinux_2_{minor}_{arch}" for minor in range(36, 16, -1)]
        platforms += [f"--platform=manylinux2014_{arch}"]
        for version in pythons:
            abi = "cp" + version.replace(".", "")
            pip("download", "--require-hashes", "--no-deps", "--only-binary=:all:", *platforms,
                "--implementation=cp", f"--python-version={version}", f"--abi={abi}", "-d", str(tmp), "-r", str(binary))
        pip("download", "--require-hashes", "--no-deps", "--no-binary=:all:", "-d", str(tmp), "-r", str(source))
    # Belt and braces: every file must be one the lock names, for its own project.
    sums = []
    for path in sorted(tmp.iterdir()):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if not any(digest in block for block in pins.values()):
            raise SystemExit(f"wheelhouse: {path.name} ({digest}) is not in {LOCK}")
        sums.append(f"{digest}  {path.name}\n")
    (tmp / "SHA256SUMS").write_text("".join(sums))
    shutil.rmtree(out, ignore_errors=True)
    os.rename(tmp, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
