"""The man page (debian/email-sync.1) is kept equal to the CLI: every command, option and exit code, and no other."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from emailsync import errors
from emailsync.commands import cli

MAN = (Path(__file__).resolve().parents[2] / "debian" / "email-sync.1").read_text()


def section(name: str) -> str:
    return MAN[MAN.index(f".SH {name}\n") :].split("\n.SH ", 1)[0]


def commands() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in cli._parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def man_commands() -> set[str]:
    """The commands the COMMANDS section describes: the first word of each .TP entry."""
    entries = re.findall(r"^\.TP\n(?:\.B )?(?:\\fB)?([a-z-]+)", section("COMMANDS"), re.M)
    return set(entries)


def test_the_man_page_describes_exactly_the_cli_commands() -> None:
    assert man_commands() == set(commands())


def test_every_option_of_every_command_is_in_the_man_page() -> None:
    described = section("COMMANDS")
    for name, parser in commands().items():
        for action in parser._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert option.replace("-", "\\-") in described, f"{name} {option} is not in debian/email-sync.1"


def test_the_global_options_are_in_the_man_page() -> None:
    for action in cli._parser()._actions:
        for option in action.option_strings:
            if option != "-h":
                assert option.replace("-", "\\-") in section("OPTIONS"), f"{option} is not in debian/email-sync.1"


def test_the_man_page_lists_exactly_the_exit_codes() -> None:
    codes = {value for name, value in vars(errors).items() if name.startswith("EXIT_")}
    listed = {int(code) for code in re.findall(r"^\.TP\n\.B (\d+)$", section("EXIT STATUS"), re.M)}
    assert listed == codes
