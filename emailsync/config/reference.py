"""The configuration's files and reference, all rendered from settings.KEYS.

`email-sync config --sample` prints every key commented out (the .deb's example, packaging/email-sync.toml),
`--starter` the short /etc/email-sync/email-sync.toml the package writes once, at its first installation, and
`--markdown` docs/configuration.md: each key's default and meaning come from its one declaration, so none of them
can drift from the code (tests/unit/config/test_reference.py and tests/deb/test_config_template.py hold the
committed copies to it).
Only the standard library and config are imported, so packaging can run it with any python3 from the source tree.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import groupby
from typing import Any

from emailsync.config import settings, values

_SYNTAX = """\
# Durations are systemd time spans: 90, 5min, 2h 30min, 1.5h. Any key can also be set by the environment as
# EMAIL_SYNC_<SECTION>_<KEY> (e.g. in a drop-in of the unit: `systemctl edit email-sync.service`,
# Environment=EMAIL_SYNC_BACKEND_BASE_URL=http://10.0.0.5:8000). Unknown keys and sections are errors, not ignored.
"""

_SECRETS = """\
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

SAMPLE_HEADER = f"""\
# email-sync.toml: every key of email-sync's configuration, commented out at its default, with what it means.
#
# Generated from emailsync/config/settings.py by `email-sync config --sample` (the installed package prints the one
# of its release; /usr/share/doc/email-sync/examples/email-sync.toml is a copy). The configuration is
# /etc/email-sync/email-sync.toml: copy there what you need, uncommented and changed.
#
{_SYNTAX}#
{_SECRETS}"""

STARTER_HEADER = f"""\
# /etc/email-sync/email-sync.toml: the configuration of email-sync.
#
# The package wrote this file when it was first installed and never changes it again: it is yours, and upgrades
# keep it as it is, asking nothing. Below are the keys a host usually sets; every other key keeps its default until
# you add it to its section here. All the keys, commented out at their defaults, with what each means:
# `email-sync config --sample` (the same as /usr/share/doc/email-sync/examples/email-sync.toml).
#
{_SYNTAX}#
{_SECRETS}"""

# The keys /etc/email-sync/email-sync.toml starts with: where the backend is, and where alerts go.
STARTER_KEYS = ("backend.base_url", "backend.sync_path", "alert.webhook_url")

MARKDOWN_HEADER = """\
# Configuration reference

<!-- Generated from emailsync/config/settings.py by `email-sync config --markdown`: edit the keys there, then
`make docs`. -->

email-sync reads TOML from `--config PATH`, else `$EMAIL_SYNC_CONFIG`, else `/etc/email-sync/email-sync.toml`. The
package writes that file once, when it is first installed, with the keys a host usually sets (`email-sync config
--starter`), and never changes it afterwards: upgrades keep your edits and ask nothing. Every key below, commented
out at its default, is in `email-sync config --sample` (and `/usr/share/doc/email-sync/examples/email-sync.toml`).
Every key can be overridden by the environment as `EMAIL_SYNC_<SECTION>_<KEY>` (e.g.
`EMAIL_SYNC_BACKEND_SYNC_PATH`). Unknown keys and sections are errors, not ignored; a bad value is one line naming
the key and the file, exit 78. A file saved with a UTF-8 byte order mark (as Notepad does) is read as if it had
none.

Durations are systemd time spans, read exactly as `systemd-analyze timespan` reads them (systemd.time(7)): a bare
number is seconds; units `us`/`usec`/`μs`, `ms`/`msec`, `s`/`sec`/`second(s)`, `m`/`min`/`minute(s)`,
`h`/`hr`/`hour(s)`, `d`/`day(s)`, `w`/`week(s)`, `M`/`month(s)` (30.44 days), `y`/`year(s)` (365.25 days), combined
with or without spaces and with fractions: `90`, `5min`, `2h 30min`, `1h30m`, `1.5h`, `250ms`.

The secrets (the database URL, the backend token) are best kept out of this file: see "Secrets" in
[operations.md](operations.md).
"""

MARKDOWN_FOOTER = """
## Notes on some keys

- `database.statement_timeout` is also the `lock_timeout` of our statements; both are set inside every transaction,
  so they hold behind PgBouncer too.
- `users.id_column`: integers, UUIDs and strings all work. `users.last_sync_column` is the only column email-sync
  writes in the app's tables.
- `users.last_sync_timezone` matters only for a PostgreSQL `timestamp` (without time zone) column; it must be `UTC`
  on SQLite. See "Time zones" in [operations.md](operations.md).
- `users.filter` is a condition on `u`, the users table: e.g. `u.active AND NOT u.deleted`.
- `sync.lease` must be at least twice the longest call with its retries (from `backend.retries`, `call_timeout` and
  `retry_backoff_max`), or the configuration is refused (78).
- `backend.base_url` carries no credentials, query or fragment. TLS is always verified; `backend.ca_file` adds a
  private CA.
- `backend.health_path`: a 404 there is a configuration error (78), a 5xx temporary (75).
- `backend.read_timeout` is the longest wait for the next byte; `backend.call_timeout` is the deadline of the whole
  request, so a trickling answer cannot stretch it: a request cut off is a transport failure, retried like one,
  each retry with a deadline of its own. `call_timeout + retry_backoff_max` must stay under half of the unit's
  `WatchdogSec=` (`run` and `check` enforce it).
- `backend.retry_backoff_max`: a `Retry-After` longer than this fails the user for this run.
- `metrics.textfile`: a file node_exporter's textfile collector reads, in a directory the unit may write; off when
  empty. The default is the package's place, linked from Debian's node_exporter textfile directory. See "Metrics"
  in [operations.md](operations.md).
- `alert.webhook_url` is treated as a secret in logs; `alert.command` is split like a shell would split it, but run
  without a shell. Both are off when empty. See "Alerts" in [operations.md](operations.md).
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


def _is_duration(key: settings.Key) -> bool:
    if not isinstance(key.default, float):
        return False
    try:
        return bool(key.parse("5m") == 300.0)
    except values.Invalid:
        return False


def toml_value(key: settings.Key) -> str:
    """The key's default as TOML (an empty string for a required key or one that is off by default)."""
    default: Any = key.default
    if default is settings.REQUIRED or default == "":
        return '""'
    if _is_duration(key):
        return f'"{duration(default)}"' if default else "0"  # 0: a duration derived from other keys
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, tuple):
        return "[" + ", ".join(str(one) for one in default) + "]"
    if isinstance(default, int | float):
        return f"{default:g}" if isinstance(default, float) else str(default)
    return '"' + str(default).replace("\\", "\\\\").replace('"', '\\"') + '"'


def default_text(key: settings.Key) -> str:
    if key.default is settings.REQUIRED:
        return "required"
    if key.default == "":
        return "none"
    return toml_value(key)


def _by_section(keys: Iterable[settings.Key]) -> Iterator[tuple[str, Iterator[settings.Key]]]:
    """The keys in their declared order, a group per section: every rendering follows the TOML file's layout."""
    return groupby(keys, key=lambda key: key.section)


def _commented(header: str, keys: Iterable[settings.Key]) -> str:
    """A TOML file of ``header`` and ``keys``, each in its section, commented out at its default."""
    out = [header]
    for section, in_section in _by_section(keys):
        out.append(f"\n[{section}]\n")
        for key in in_section:
            out.append(f"# {key.help} (default: {default_text(key)})\n")
            out.append(f"#{key.name} = {toml_value(key)}\n")
    return "".join(out)


def sample() -> str:
    """The reference as a TOML file: every key once, in its section, commented out at its default."""
    return _commented(SAMPLE_HEADER, settings.KEYS)


def starter() -> str:
    """What the package writes to /etc/email-sync/email-sync.toml at its first installation: the STARTER_KEYS,
    commented out, and where the others are. Never rewritten by an upgrade, so a new key changes nothing in it."""
    return _commented(STARTER_HEADER, [key for key in settings.KEYS if key.dotted in STARTER_KEYS])


def markdown() -> str:
    """The configuration reference: one table per section, each key with its default, variable and meaning."""
    out = [MARKDOWN_HEADER]
    for section, keys in _by_section(settings.KEYS):
        out.append(f"\n## [{section}]\n\n| key | default | environment | meaning |\n|---|---|---|---|\n")
        for key in keys:
            default = default_text(key).strip('"')
            shown = "—" if default == "none" else default if default == "required" else f"`{default}`"
            meaning = key.help.replace("|", "\\|")
            out.append(f"| `{key.dotted}` | {shown} | `{key.env}` | {meaning} |\n")
    out.append(MARKDOWN_FOOTER)
    return "".join(out)
