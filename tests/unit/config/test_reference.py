"""`email-sync config --sample | --starter | --markdown`: the configuration files and the reference, rendered from the
key declarations."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from emailsync.commands import cli
from emailsync.config import reference


@pytest.mark.parametrize(
    ("seconds", "written"),
    [(3600.0, "1h"), (90.0, "1m30s"), (86400.0, "1d"), (0.25, "250ms"), (1.5, "1500ms")],
)
def test_a_default_duration_is_written_the_way_an_operator_would(seconds: float, written: str) -> None:
    assert reference.duration(seconds) == written


@pytest.mark.parametrize(
    ("flag", "render"),
    [("--sample", reference.sample), ("--starter", reference.starter), ("--markdown", reference.markdown)],
)
def test_the_config_command_prints_its_form_without_reading_any_config(
    flag: str, render: Callable[[], str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMAIL_SYNC_CONFIG", "/nonexistent/email-sync.toml")
    assert cli.main(["config", flag]) == 0
    assert capsys.readouterr().out == render()


def test_the_config_command_needs_a_form(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["config"])
    assert exit_.value.code == 64  # a usage error (EX_USAGE)
    assert "one of the arguments --sample --starter --markdown is required" in capsys.readouterr().err
