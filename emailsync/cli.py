"""The ``email-sync`` command, and the one place where failures become exit codes.

Heavy modules (SQLAlchemy, requests, structlog) are imported inside the commands, so ``--version`` and ``--help``
answer at once.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TYPE_CHECKING

from emailsync import __version__
from emailsync.errors import EXIT_BUG, EXIT_CONFIG, EXIT_OK, EXIT_TEMPFAIL, EmailSyncError

if TYPE_CHECKING:
    from emailsync.config import Config

EPILOG = f"""\
exit codes:
  {EXIT_OK}   the command did its work (a run's per-user failures are reported, not fatal)
  {EXIT_BUG}   a bug: the traceback is in the log
  {EXIT_TEMPFAIL}  temporary: the database or the backend is unreachable or failing; the next run may succeed
  {EXIT_CONFIG}  configuration: bad config, wrong endpoint or token, missing schema; fix it, then run again

config: --config PATH, else $EMAIL_SYNC_CONFIG, else /etc/email-sync/email-sync.toml;
any key can be overridden by EMAIL_SYNC_<SECTION>_<KEY> (e.g. EMAIL_SYNC_BACKEND_SYNC_PATH).
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="email-sync",
        description="Sync the mailboxes of users whose last sync is older than the interval, once per run.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"email-sync {__version__}")
    parser.add_argument("--config", metavar="PATH", help="the TOML config file")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("run", help="run one sync cycle, then exit (what the systemd timer starts)")
    commands.add_parser("migrate", help="create or upgrade email-sync's own tables")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    import structlog

    from emailsync import logs

    logs.configure()
    log = structlog.get_logger()
    commands: dict[str, Callable[[Config], int]] = {"run": _run, "migrate": _migrate}
    try:
        config = _load_config(args.config)
        return commands[args.command](config)
    except EmailSyncError as error:
        log.error(error.event, error=str(error), exit_code=error.exit_code)
        return error.exit_code
    except Exception:
        log.exception("bug", exit_code=EXIT_BUG)
        return EXIT_BUG


def _load_config(path: str | None) -> Config:
    import structlog

    from emailsync import config, logs

    loaded = config.load(config.config_path(path, os.environ))
    logs.configure(loaded.log_level, loaded.secrets)
    for warning in loaded.warnings:
        structlog.get_logger().warning("config_warning", warning=warning)
    return loaded


def _run(config: Config) -> int:
    from emailsync import cycle
    from emailsync.notify import Notifier

    notifier = Notifier.from_env()
    cycle.check_watchdog_fits(config, notifier)
    stop = threading.Event()

    def on_signal(number: int, _: FrameType | None) -> None:
        stop.set()  # the cycle sees it within a poll, sends STOPPING=1 and winds down

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    notifier.ready()
    cycle.run(config, notifier, stop)
    return EXIT_OK


def _migrate(config: Config) -> int:
    import structlog

    from emailsync import db

    engine = db.connect(config.database)
    try:
        before, after = db.migrate(engine)
    finally:
        engine.dispose()
    structlog.get_logger().info("schema_migrated", from_version=before, to_version=after)
    return EXIT_OK


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
