"""The README and docs/ are the operators' reference: they must not fall behind the code."""

from pathlib import Path

import pytest

from emailsync.config import reference
from emailsync.config.settings import KEYS

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
CONFIGURATION = ROOT / "docs" / "configuration.md"
FAILURES = ROOT / "docs" / "failures.md"


def test_the_configuration_reference_is_what_email_sync_config_markdown_prints() -> None:
    assert CONFIGURATION.read_text() == reference.markdown(), (
        "docs/configuration.md is stale: regenerate with `make docs` (email-sync config --markdown) and commit it"
    )


@pytest.mark.parametrize("key", [key.dotted for key in KEYS])
def test_the_configuration_reference_documents_every_key(key: str) -> None:
    assert f"| `{key}` |" in CONFIGURATION.read_text()


@pytest.mark.parametrize("code", ["| 0 |", "| 1 |", "| 75 |", "| 78 |"])
def test_readme_documents_every_exit_code(code: str) -> None:
    assert code in README


def test_every_test_named_in_the_failure_table_exists() -> None:
    """The failure table points at the tests that prove each case; a renamed test must not leave it dangling."""
    import re

    tests = ROOT / "tests"
    table = FAILURES.read_text()
    module = ""
    checked = 0
    for prefix, name, file in re.findall(r"`([\w/]*::)?(test_\w+)(\.py)?", table):
        if file:  # a whole test file, named as such
            continue
        module = prefix.removesuffix("::") or module
        path = tests / (module.replace("e2e", "e2e/test_systemd") if module == "e2e" else module)
        source = path.with_suffix(".py").read_text()
        assert f"def {name}" in source, f"{name} not in {path}"
        checked += 1
    assert checked > 30


@pytest.mark.parametrize(
    "page", ["README.md", "CONTRIBUTING.md", *(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))]
)
def test_every_relative_link_leads_to_a_file_that_exists(page: str) -> None:
    import re

    path = ROOT / page
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", path.read_text()):
        assert (path.parent / target).exists(), f"{page} links to {target}, which does not exist"


def test_the_crash_window_the_docs_state_is_the_one_the_cycle_keeps() -> None:
    from emailsync.sync.cycle import UNWRITTEN_AT_MOST, UNWRITTEN_FOR

    window = f"last {UNWRITTEN_FOR * 1000:g} ms, {UNWRITTEN_AT_MOST} at most"
    for page in (ROOT / "docs" / "operations.md", FAILURES):
        assert window in " ".join(page.read_text().split()), f"{page.name} does not say {window!r}"
