"""The command line itself: every option explains itself in --help, and a count that cannot be is a usage error."""

from __future__ import annotations

import argparse

import pytest

from emailsync.commands import cli
from emailsync.errors import EXIT_USAGE


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
