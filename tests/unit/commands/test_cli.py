"""The command line itself: every option explains itself in --help, a count that cannot be is a usage error, a broken
configuration is one line and exit 78, and the console script's start-up (the garbage collector off while the
modules are imported, on for the work)."""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from emailsync import SCHEMA_VERSION, __version__
from emailsync.commands import cli
from emailsync.errors import EXIT_CONFIG, EXIT_TEMPFAIL, EXIT_USAGE
from emailsync.store import schema
from tests.unit.config.test_credentials import UNENCODED_URL
from tests.unit.config.test_settings import PASSWORD, config_file, raw_file, secret_file


def parsers(parser: argparse.ArgumentParser, name: str = "email-sync") -> list[tuple[str, argparse.ArgumentParser]]:
    """The parser and every subcommand's parser, depth first, with the command line that reaches it."""
    found = [(name, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command, sub in action.choices.items():
                found += parsers(sub, f"{name} {command}")
    return found


def test_every_option_and_argument_of_every_command_has_help_text() -> None:
    missing = [
        f"{name} {'/'.join(action.option_strings) or action.dest}"
        for name, parser in parsers(cli._parser())
        for action in parser._actions
        if not (action.help and action.help.strip())
    ]

    assert missing == []


def test_every_command_has_help_text() -> None:
    [subcommands] = [a for a in cli._parser()._actions if isinstance(a, argparse._SubParsersAction)]
    helped = {choice.dest for choice in subcommands._choices_actions if choice.help}

    assert helped == set(subcommands.choices)


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--limit", "-1"],
        ["run", "--limit", "0"],
        ["run", "--dry-run", "--limit", "0"],
        ["run", "--limit", "ten"],
        ["users", "--limit", "-5"],
        ["users", "--limit", "0"],
    ],
)
def test_a_limit_below_one_is_a_usage_error_in_one_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)

    assert exited.value.code == EXIT_USAGE
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert errors == [
        f"email-sync {argv[0]}: error: argument --limit: must be a whole number of users, 1 or more, got {argv[-1]!r}"
    ]


def test_a_run_from_the_console_script_collects_what_its_work_makes() -> None:
    probe = (
        "import gc\n"
        "from emailsync.commands import cli\n"
        "gc.disable()  # as cli.entry does\n"
        "cli._start_up_done()\n"
        "print(gc.isenabled(), gc.get_freeze_count() > 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["True", "True"]


def test_in_process_callers_keep_their_collector_as_it_was() -> None:
    frozen = gc.get_freeze_count()

    cli._start_up_done()

    assert gc.isenabled()
    assert gc.get_freeze_count() == frozen


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No EMAIL_SYNC_* or systemd variables from the developer's shell; the signal handlers `run` sets, undone."""
    for name in list(os.environ):
        if name.startswith("EMAIL_SYNC_") or name in ("CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET", "WATCHDOG_USEC"):
            monkeypatch.delenv(name)
    handlers = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
    yield
    for number, handler in handlers.items():
        signal.signal(number, handler)
    structlog.contextvars.clear_contextvars()


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[dict[str, Any]], str]:
    capsys.readouterr()
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, [json.loads(line) for line in out.splitlines()], out + err


def assert_one_config_error(code: int, lines: list[dict[str, Any]], *words: str) -> str:
    assert code == EXIT_CONFIG
    assert len(lines) == 1, lines
    assert lines[0]["level"] == "error"
    message: str = lines[0]["error"]
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    return message


BROKEN = {
    "unknown_key": (
        '[backend]\nbase_url = "http://h"\nretires = 3\n[database]\nurl = "sqlite://"\n',
        "backend.retires",
    ),
    "wrong_type": (
        '[backend]\nbase_url = "http://h"\nretries = "many"\n[database]\nurl = "sqlite://"\n',
        "backend.retries",
    ),
    "missing_required": ('[database]\nurl = "sqlite://"\n', "backend.base_url"),
    "short_lease": (
        '[backend]\nbase_url = "http://h"\n[database]\nurl = "sqlite://"\n[sync]\nlease = 1\n',
        "sync.lease",
    ),
    "invalid_toml": ("[backend\n", "invalid TOML"),
    "invalid_utf8": (b"[backend]\nbase_url = '\xc3\x28'\n", "UTF-8"),
}


@pytest.mark.parametrize("name", BROKEN)
@pytest.mark.usefixtures("clean_env")
def test_cli_broken_config_exits_78_with_one_error_line_naming_key_and_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    content, key = BROKEN[name]
    path = raw_file(tmp_path, content)
    code, lines, _ = run_cli(capsys, "--config", path, "run")
    assert_one_config_error(code, lines, key, path)
    assert lines[0]["event"] == "config_invalid"


@pytest.mark.usefixtures("clean_env")
def test_cli_missing_config_file_exits_78_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "missing.toml")
    code, lines, _ = run_cli(capsys, "--config", path, "migrate")
    assert_one_config_error(code, lines, path, "not found")


@pytest.mark.usefixtures("clean_env")
def test_cli_takes_the_config_path_from_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = config_file(tmp_path, backend={"retires": 3})
    monkeypatch.setenv("EMAIL_SYNC_CONFIG", path)
    code, lines, _ = run_cli(capsys, "run")
    assert_one_config_error(code, lines, path, "backend.retires")


@pytest.mark.usefixtures("clean_env")
def test_cli_env_value_of_wrong_type_names_the_variable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMAIL_SYNC_SYNC_INTERVAL", "soon")
    code, lines, _ = run_cli(capsys, "--config", config_file(tmp_path), "run")
    assert_one_config_error(code, lines, "EMAIL_SYNC_SYNC_INTERVAL", "sync.interval")


@pytest.mark.usefixtures("clean_env")
def test_cli_never_prints_the_database_password(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = config_file(tmp_path, database={"url": f"mysql://admin:{PASSWORD}@db/app"})
    code, lines, output = run_cli(capsys, "--config", path, "run")
    assert_one_config_error(code, lines, "database.url", path)
    assert PASSWORD not in output


@pytest.mark.usefixtures("clean_env")
def test_cli_a_database_password_with_an_unencoded_at_sign_exits_78_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config_file(tmp_path, database={"url": UNENCODED_URL})
    code, lines, output = run_cli(capsys, "--config", path, "run")
    assert_one_config_error(code, lines, "database.url", "percent-encoded", path)
    assert "ss:w0rd" not in output and "Zq@9" not in output


@pytest.mark.usefixtures("clean_env")
def test_cli_valid_config_with_unreachable_database_exits_75(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines, _ = run_cli(capsys, "--config", config_file(tmp_path), "run")
    assert code == EXIT_TEMPFAIL
    assert [line["event"] for line in lines if line["level"] == "error"] == ["database_unavailable"]


@pytest.mark.usefixtures("clean_env")
def test_cli_logs_the_warning_of_a_secret_file_readable_by_others(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url_file = secret_file(tmp_path, "db-url", f"postgresql://u:{PASSWORD}@127.0.0.1:1/x", mode=0o644)
    path = config_file(tmp_path, database={"url": None, "url_file": url_file})
    code, lines, output = run_cli(capsys, "--config", path, "run")
    assert code == EXIT_TEMPFAIL
    warnings = [line for line in lines if line["event"] == "config_warning"]
    assert len(warnings) == 1
    assert warnings[0]["level"] == "warning"
    assert url_file in warnings[0]["warning"]
    assert PASSWORD not in output


def test_version_prints_the_release_and_the_schema_version_it_needs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"email-sync {__version__} (database schema v{schema.SCHEMA_VERSION})"


def test_help_mentions_exit_codes_75_and_78(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "exit codes" in out
    for code in (EXIT_TEMPFAIL, EXIT_CONFIG):
        assert f"\n  {code} " in out
    assert "EMAIL_SYNC_CONFIG" in out


@pytest.mark.parametrize(
    "argv",
    [["stattus"], ["status", "--jsno"], ["park"]],
    ids=["unknown command", "unknown option", "missing argument"],
)
def test_a_usage_error_exits_64_not_2_which_means_unhealthy(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 64  # EX_USAGE
    error = capsys.readouterr().err
    assert "error:" in error
    assert "Traceback" not in error


def test_version_answers_without_importing_the_heavy_modules() -> None:
    code = (
        "import sys\nfrom emailsync.commands import cli\n"
        "try:\n    cli.main(['--version'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('sqlalchemy', 'urllib3', 'requests', 'structlog') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert result.stdout.splitlines() == [f"email-sync {__version__} (database schema v{SCHEMA_VERSION})", "[]"]
