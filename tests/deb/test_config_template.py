"""The conffile the .deb ships (/etc/email-sync/email-sync.toml) lists every key of emailsync.config.KEYS with its
default, and is exactly what packaging/gen-config.py renders from them: it cannot drift from the code."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from types import ModuleType

from emailsync import config
from tests import scripts

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "packaging" / "email-sync.toml"


def generator() -> ModuleType:
    return scripts.load("gen-config.py")


def test_the_committed_template_is_what_the_generator_renders_from_keys() -> None:
    assert TEMPLATE.read_text() == generator().render(), "run: python3 packaging/gen-config.py, and commit the result"


def test_every_key_is_listed_once_in_its_section_with_a_default_the_key_accepts() -> None:
    listed: list[str] = []
    section = ""
    for line in TEMPLATE.read_text().splitlines():
        if match := re.fullmatch(r"\[(\w+)\]", line):
            section = match[1]
        elif match := re.fullmatch(r"#(\w+) = .*", line):
            listed.append(f"{section}.{match[1]}")
    assert sorted(listed) == sorted(key.dotted for key in config.KEYS)
    assert generator().check(TEMPLATE.read_text()) == []


def test_the_template_as_shipped_is_valid_toml_and_only_needs_the_backend_url(tmp_path: Path) -> None:
    shipped = TEMPLATE.read_text()
    assert all(not table for table in tomllib.loads(shipped).values())  # every key commented out
    edited = tmp_path / "email-sync.toml"
    edited.write_text(shipped.replace('#base_url = ""', 'base_url = "http://127.0.0.1:8000"'))
    loaded = config.load(str(edited), env={"EMAIL_SYNC_DATABASE_URL": "sqlite:////var/lib/email-sync/app.db"})
    assert loaded.backend.base_url == "http://127.0.0.1:8000"
