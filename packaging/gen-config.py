#!/usr/bin/env python3
"""Write the commented /etc/email-sync/email-sync.toml the .deb ships, from emailsync.config.KEYS.

Every key of KEYS appears once, commented out, with its default and its meaning, so the file cannot drift from
the code: `make deb` regenerates it and fails when the committed copy differs (--check), and tests/deb checks it.

    python3 packaging/gen-config.py            # rewrite packaging/email-sync.toml
    python3 packaging/gen-config.py --check    # exit 1 when it is stale or does not cover every key
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from emailsync import config  # noqa: E402

OUTPUT = ROOT / "packaging" / "email-sync.toml"

HEADER = """\
# /etc/email-sync/email-sync.toml: configuration of email-sync (a dpkg conffile: your edits survive upgrades).
#
# Generated from emailsync/config.py (KEYS) by packaging/gen-config.py; every key is listed below, commented out,
# with its default. Uncomment and change what you need. Durations are systemd time spans: 90, 5min, 2h 30min, 1.5h.
# Any key can also be set by the environment as EMAIL_SYNC_<SECTION>_<KEY> (e.g. in a drop-in of the unit:
# `systemctl edit email-sync.service`, Environment=EMAIL_SYNC_BACKEND_SYNC_PATH=/api/v1/sync/start).
# Unknown keys and sections are errors, not ignored.
#
# This file holds no secrets and stays world-readable (0644): the service runs as a transient DynamicUser=
# that must be able to read it. The secrets go into two files readable by root only, which systemd passes to the
# service as credentials (LoadCredential= in email-sync.service; they never appear in argv, the environment or
# the log):
#
#   install -d -m 0700 /etc/credstore
#   install -m 0600 /dev/null /etc/credstore/email-sync.database-url    # one line: postgresql://USER:PASSWORD@HOST/DB
#   install -m 0600 /dev/null /etc/credstore/email-sync.backend-token   # one line: the bearer token (optional)
#
# Outside systemd (root running `email-sync migrate`, `check` or `status`) email-sync reads those same files.
#
# Then: email-sync migrate && email-sync check && systemctl enable --now email-sync.timer
# Nothing syncs before that last step: the package installs the timer disabled.
"""

_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def duration(seconds: float) -> str:
    """3600.0 -> "1h", 90.0 -> "1m30s", 0.25 -> "250ms": the form an operator would write."""
    if seconds < 1 or seconds != int(seconds):
        return f"{round(seconds * 1000)}ms"
    left, parts = int(seconds), []
    for unit, size in _UNITS:
        if left >= size:
            parts.append(f"{left // size}{unit}")
            left %= size
    return "".join(parts)


def _is_duration(key: config.Key) -> bool:
    if not isinstance(key.default, float):
        return False
    try:
        return bool(key.parse("5m") == 300.0)
    except ValueError:
        return False


def toml_value(key: config.Key) -> str:
    default: Any = key.default
    if default is config.REQUIRED or default == "":
        return '""'
    if _is_duration(key):
        return f'"{duration(default)}"'
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, int | float):
        return f"{default:g}" if isinstance(default, float) else str(default)
    return '"' + str(default).replace("\\", "\\\\").replace('"', '\\"') + '"'


def default_text(key: config.Key) -> str:
    if key.default is config.REQUIRED:
        return "required"
    if key.default == "":
        return "none"
    return toml_value(key)


def render() -> str:
    out = [HEADER]
    section = None
    for key in config.KEYS:
        if key.section != section:
            section = key.section
            out.append(f"\n[{section}]\n")
        help_text = " ".join(key.help.split())
        out.append(f"# {help_text} (default: {default_text(key)})\n")
        out.append(f"#{key.name} = {toml_value(key)}\n")
    return "".join(out)


def check(text: str) -> list[str]:
    """Problems of a rendered file: a key missing, an unknown one, or a value the key itself rejects."""
    problems = []
    seen: dict[str, str] = {}
    section = ""
    for line in text.splitlines():
        if match := re.fullmatch(r"\[(\w+)\]", line):
            section = match[1]
        elif match := re.fullmatch(r"#(\w+) = (.*)", line):
            seen[f"{section}.{match[1]}"] = match[2]
    wanted = {key.dotted: key for key in config.KEYS}
    problems += [f"missing key {name}" for name in wanted if name not in seen]
    problems += [f"unknown key {name}" for name in seen if name not in wanted]
    for name, raw in seen.items():
        key = wanted.get(name)
        if key is None or key.default is config.REQUIRED or key.default == "":
            continue
        value = tomllib.loads(f"v = {raw}")["v"]
        try:
            parsed = key.parse(value)
        except ValueError as error:
            problems.append(f"{name}: the default as written ({raw}) is rejected: {error}")
            continue
        if parsed != key.default:
            problems.append(f"{name}: {raw} parses to {parsed!r}, not the default {key.default!r}")
    # The whole file, with every key uncommented, must still be valid TOML.
    tomllib.loads(re.sub(r"(?m)^#(\w+ = )", r"\1", text))
    return problems


def main(argv: list[str]) -> int:
    text = render()
    problems = check(text)
    if problems:
        print("gen-config: " + "; ".join(problems), file=sys.stderr)
        return 1
    if argv[1:] == ["--check"]:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            print(
                f"gen-config: {OUTPUT.relative_to(ROOT)} is stale (emailsync/config.py KEYS changed): "
                "run python3 packaging/gen-config.py and commit it",
                file=sys.stderr,
            )
            return 1
        return 0
    OUTPUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
