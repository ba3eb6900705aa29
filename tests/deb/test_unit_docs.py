"""The units' Documentation= links lead to what the package installs: the man page, and docs uncompressed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC_DIR = "file:///usr/share/doc/email-sync/"
UNITS = ["email-sync.service", "email-sync.timer", "email-sync-alert@.service"]


def documentation(unit: str) -> list[str]:
    text = (ROOT / "systemd" / unit).read_text()
    return [uri for line in re.findall(r"^Documentation=(.*)$", text, re.M) for uri in line.split()]


def installed_docs() -> set[str]:
    """The paths under /usr/share/doc/email-sync that debian/email-sync.docs installs (a directory: its files)."""
    found: set[str] = set()
    for entry in (ROOT / "debian" / "email-sync.docs").read_text().split():
        source = ROOT / entry
        files = sorted(source.rglob("*")) if source.is_dir() else [source]
        found.update(str(f.relative_to(source.parent)) for f in files if f.is_file())
    return found


@pytest.mark.parametrize("unit", UNITS)
def test_the_unit_points_at_the_man_page_first(unit: str) -> None:
    assert documentation(unit)[0] == "man:email-sync(1)"
    assert "debian/email-sync.1" in (ROOT / "debian" / "email-sync.manpages").read_text().split()


@pytest.mark.parametrize("unit", UNITS)
def test_every_documentation_file_of_the_unit_is_installed_uncompressed(unit: str) -> None:
    files = [uri.removeprefix(DOC_DIR) for uri in documentation(unit) if uri.startswith("file://")]
    assert files
    for name in files:
        assert name in installed_docs(), f"{unit}: {name} is not installed by debian/email-sync.docs"
        assert name.endswith(".md")
    assert "dh_compress -X.md" in (ROOT / "debian" / "rules").read_text()  # Markdown stays uncompressed
