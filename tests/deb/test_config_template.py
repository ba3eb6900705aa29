"""The configuration files of the .deb, both rendered from emailsync.settings.KEYS so they cannot drift from the code.

- The reference (packaging/email-sync.toml, installed as /usr/share/doc/email-sync/examples/email-sync.toml): every
  key with its default, exactly what `email-sync config --sample` renders.
- The starter (`email-sync config --starter`): what postinst writes to /etc/email-sync/email-sync.toml at the first
  installation, and never again. A key added by a release changes the reference, never the admin's file.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from emailsync.config import reference, settings

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "packaging" / "email-sync.toml"
REGENERATE = "regenerate with `make docs` (email-sync config --sample >packaging/email-sync.toml) and commit it"


def listed_defaults(text: str) -> dict[str, str]:
    """{section.key: the default as written} of every commented-out key line."""
    found: dict[str, str] = {}
    section = ""
    for line in text.splitlines():
        if match := re.fullmatch(r"\[(\w+)\]", line):
            section = match[1]
        elif match := re.fullmatch(r"#(\w+) = (.*)", line):
            found[f"{section}.{match[1]}"] = match[2]
    return found


def test_the_committed_template_is_what_email_sync_config_sample_prints() -> None:
    assert TEMPLATE.read_text() == reference.sample(), REGENERATE


def test_packaging_renders_it_with_a_bare_python_from_the_source_tree() -> None:
    """packaging/deb-build.sh runs `python3 -m emailsync config --sample` in the tree, with no venv around it."""
    done = subprocess.run(
        [sys.executable, "-S", "-B", "-m", "emailsync", "config", "--sample"],  # -S: the stdlib only
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == TEMPLATE.read_text(), REGENERATE


def test_every_key_is_listed_once_in_its_section() -> None:
    lines = [line for line in TEMPLATE.read_text().splitlines() if re.fullmatch(r"#\w+ = .*", line)]
    assert len(lines) == len(settings.KEYS)
    assert sorted(listed_defaults(TEMPLATE.read_text())) == sorted(key.dotted for key in settings.KEYS)


def test_every_default_as_written_parses_back_to_the_keys_default() -> None:
    keys = {key.dotted: key for key in settings.KEYS}
    for name, raw in listed_defaults(TEMPLATE.read_text()).items():
        key = keys[name]
        if key.default is settings.REQUIRED or key.default == "":
            assert raw == '""', name
            continue
        assert key.parse(tomllib.loads(f"v = {raw}")["v"]) == key.default, name


def test_the_template_with_every_key_uncommented_is_valid_toml() -> None:
    tomllib.loads(re.sub(r"(?m)^#(\w+ = )", r"\1", TEMPLATE.read_text()))


@pytest.mark.parametrize("render", [reference.sample, reference.starter])
def test_the_file_as_written_is_valid_toml_and_only_needs_the_backend_url(
    render: Callable[[], str], tmp_path: Path
) -> None:
    written = render()
    assert all(not table for table in tomllib.loads(written).values())  # every key commented out
    edited = tmp_path / "email-sync.toml"
    edited.write_text(written.replace('#base_url = ""', 'base_url = "http://127.0.0.1:8000"'))
    loaded = settings.load(str(edited), env={"EMAIL_SYNC_DATABASE_URL": "sqlite:////var/lib/email-sync/app.db"})
    assert loaded.backend.base_url == "http://127.0.0.1:8000"


def test_the_starter_lists_the_keys_a_host_sets_at_their_defaults_and_points_at_the_others() -> None:
    starter = reference.starter()
    sample = listed_defaults(reference.sample())
    assert listed_defaults(starter) == {name: sample[name] for name in reference.STARTER_KEYS}
    assert "email-sync config --sample" in starter
    assert "/usr/share/doc/email-sync/examples/email-sync.toml" in starter


def test_a_release_that_adds_a_key_changes_the_reference_but_not_the_starter(monkeypatch: pytest.MonkeyPatch) -> None:
    starter, sample = reference.starter(), reference.sample()
    new = dataclasses.replace(settings.KEYS[-1], name="added_by_a_later_release", help="A key of a later release.")
    monkeypatch.setattr(settings, "KEYS", (*settings.KEYS, new))
    assert reference.starter() == starter
    assert reference.sample() != sample
