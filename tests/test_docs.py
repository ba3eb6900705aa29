"""The README is the operators' reference: it must not fall behind the code."""

from pathlib import Path

import pytest

from emailsync.config import KEYS

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


@pytest.mark.parametrize("key", [key.dotted for key in KEYS])
def test_readme_documents_every_config_key(key: str) -> None:
    assert f"| `{key}` |" in README


@pytest.mark.parametrize("code", ["| 0 |", "| 1 |", "| 75 |", "| 78 |"])
def test_readme_documents_every_exit_code(code: str) -> None:
    assert code in README
