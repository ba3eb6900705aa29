"""The ``email-sync`` command, and the one place where failures become exit codes.

Heavy modules (SQLAlchemy, structlog) are imported inside the commands, so ``--version`` and ``--help`` answer at
once.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from types import FrameType
from typing import TYPE_CHECKING, NoReturn

from emailsync import SCHEMA_VERSION, __version__
from emailsync.errors import EXIT_BUG, EXIT_CONFIG, EXIT_NO, EXIT_OK, EXIT_TEMPFAIL, EXIT_USAGE, EmailSyncError

if TYPE_CHECKING:
    from emailsync.config.settings import Config

EPILOG = f"""\
exit codes:
  {EXIT_OK}   the command did its work (a run's per-user failures are reported, not fatal)
  {EXIT_BUG}   a bug: the traceback is in the log
  {EXIT_NO}   the answer is no: `status` unhealthy, a `check` failed, `sync USER` failed or the user is parked
  {EXIT_USAGE}  usage: an unknown command or option; no such user (`sync`, `reset`, `park`, `unpark`),
      or `unpark` of a user not parked
  {EXIT_TEMPFAIL}  temporary: the database or the backend is unreachable or failing; the next run may succeed
  {EXIT_CONFIG}  configuration: bad config, wrong endpoint or token, a schema this role may not migrate
      (or database.migrate = "manual" and `migrate` not run); fix it, then run again

config: --config PATH, else $EMAIL_SYNC_CONFIG, else /etc/email-sync/email-sync.toml;
any key can be overridden by EMAIL_SYNC_<SECTION>_<KEY> (e.g. EMAIL_SYNC_BACKEND_SYNC_PATH).
"""


# They work before the backend is configured.
NO_BACKEND = ("migrate", "status", "users", "reset", "alert", "pause", "drain", "resume", "park", "unpark")


class _Parser(argparse.ArgumentParser):
    """A usage error exits 64 (EX_USAGE, as sysexits means it), not argparse's 2: here 2 means that `status` found
    the service unhealthy, and a monitoring script with a typo in its command line must not read as that."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="email-sync",
        description="Sync the mailboxes of users whose last sync is older than the interval, once per run.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"email-sync {__version__} (database schema v{SCHEMA_VERSION})"
    )
    parser.add_argument("--config", metavar="PATH", help="the TOML config file")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="what to do; email-sync COMMAND --help for its options"
    )
    run = commands.add_parser("run", help="run one sync cycle, then exit (what the systemd timer starts)")
    run.add_argument(
        "--dry-run", action="store_true", help="print whom a run would claim now, and exit: no lease, no call"
    )
    run.add_argument(
        "--limit",
        type=_count,
        metavar="N",
        help="claim at most N users in this run (sync.max_users_per_run still caps it); "
        "with --dry-run: list the N a run would take first (default 10)",
    )
    migrate = commands.add_parser("migrate", help="create or upgrade email-sync's own tables")
    migrate.add_argument(
        "--print-app-indexes", action="store_true", help="print the index the app's users table should have, and exit"
    )
    status = commands.add_parser(
        "status", help="last runs and a 24-hour chart, backlog, backoff, leases; exit 2 when unhealthy"
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")
    commands.add_parser("check", help="check config, secrets, interpreter, database, backend and endpoint")
    sync = commands.add_parser("sync", help="sync one user now (ignores interval and backoff, not leases)")
    sync.add_argument("user", metavar="USER", help="the user's id or email")
    users = commands.add_parser("users", help="list users: due now (default), failing, leased or parked")
    which = users.add_mutually_exclusive_group()
    for name, help_text in (
        ("due", "users a run would take now, oldest first (the default)"),
        ("failing", "users in backoff after a failed sync, with their last error"),
        ("leased", "users a run holds right now, with its host and the lease left"),
        ("parked", "users set aside by `park` or the quarantine, with who and why"),
    ):
        which.add_argument(f"--{name}", dest="which", action="store_const", const=name, help=help_text)
    users.add_argument("--limit", type=_count, metavar="N", default=50, help="at most N users (default 50)")
    reset = commands.add_parser("reset", help="clear a user's backoff and quarantine so the next cycle retries it")
    target = reset.add_mutually_exclusive_group(required=True)
    target.add_argument("user", metavar="USER", nargs="?", help="the user's id or email")
    target.add_argument("--all-failing", action="store_true", help="every user in backoff")
    for name, help_text in (
        ("pause", "every host: claim nobody more, finish the calls in flight, give back the rest; until resume"),
        ("drain", "every host: claim nobody more, finish every claim already held; until resume"),
    ):
        mode = commands.add_parser(name, help=help_text)
        mode.add_argument("--reason", help="why, for `status`")
    commands.add_parser("resume", help="every host: claim again, from the next run on")
    park = commands.add_parser("park", help="set one user aside: no run syncs it until unpark")
    park.add_argument("user", metavar="USER", help="the user's id or email")
    park.add_argument("--reason", required=True, help="why, for `status` and `users --parked`")
    unpark = commands.add_parser("unpark", help="return a parked or quarantined user, with its backoff cleared")
    unpark.add_argument("user", metavar="USER", help="the user's id or email")
    alert = commands.add_parser("alert", help="record a failed run, alert when its streak calls for it (OnFailure=)")
    alert.add_argument("unit", metavar="UNIT", nargs="?", default="email-sync.service", help="the failed unit")
    reference = commands.add_parser("config", help="print a config file or the key reference, and exit")
    form = reference.add_mutually_exclusive_group(required=True)
    form.add_argument("--sample", dest="form", action="store_const", const="sample", help="every key, commented out")
    form.add_argument(
        "--starter", dest="form", action="store_const", const="starter", help="the file the package installs"
    )
    form.add_argument("--markdown", dest="form", action="store_const", const="markdown", help="the reference table")
    return parser


def _count(value: str) -> int:
    """A --limit: a whole number of users, 1 or more (0 would claim or list nobody)."""
    if not value.strip().isdecimal() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of users, 1 or more, got {value!r}")
    return int(value)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "config":
        return _config(args.form)  # reads no config file: it describes them
    import structlog

    from emailsync.systemd import logs

    logs.configure()
    log = structlog.get_logger()
    commands: dict[str, Callable[[Config, argparse.Namespace], int]] = {
        "run": _run,
        "migrate": _migrate,
        "status": _status,
        "sync": _sync,
        "users": _users,
        "reset": _reset,
        "pause": _fleet_mode,
        "drain": _fleet_mode,
        "resume": _fleet_mode,
        "park": _park,
        "unpark": _unpark,
        "alert": _alert,
    }
    try:
        if args.command == "check":
            return _check(args.config)  # it lists every configuration error itself, and goes on
        config = _load_config(args.config, args.command)
        return commands[args.command](config, args)
    except EmailSyncError as error:
        for problem in error.problems:
            log.error(error.event, error=problem, exit_code=error.exit_code)
        return error.exit_code
    except Exception:
        log.exception("bug", exit_code=EXIT_BUG)
        return EXIT_BUG


def _load_config(path: str | None, command: str) -> Config:
    """The configuration, or ConfigError listing every problem in it; for `check`, with the problems in it."""
    import structlog

    from emailsync.config import settings
    from emailsync.systemd import logs

    load = settings.gather if command == "check" else settings.load
    loaded = load(
        settings.config_path(path, os.environ), need_backend=command not in NO_BACKEND, need_database=command != "alert"
    )
    logs.configure(loaded.logging.level, loaded.secrets)
    for warning in loaded.warnings:
        structlog.get_logger().warning("config_warning", warning=warning)
    return loaded


def _run(config: Config, args: argparse.Namespace) -> int:
    from emailsync.commands import operations
    from emailsync.sync import cycle

    _start_up_done()
    if args.dry_run:
        print("\n".join(operations.dry_run(config, args.limit)))
        return EXIT_OK
    if args.limit is not None:  # this run only: the same cap as sync.max_users_per_run, never above it
        cap = min(args.limit, config.sync.max_users_per_run)
        config = replace(config, sync=replace(config.sync, max_users_per_run=cap))
    from emailsync.systemd.notify import Notifier

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


def _migrate(config: Config, args: argparse.Namespace) -> int:
    import structlog

    from emailsync.store import db, schema

    with db.connected(config.database) as engine:
        if args.print_app_indexes:
            print(schema.app_index_ddl(db.dialect_of(engine), config.users))
            return EXIT_OK
        before, after = schema.migrate(engine)
    structlog.get_logger().info("schema_migrated", from_version=before, to_version=after)
    return EXIT_OK


def _status(config: Config, args: argparse.Namespace) -> int:
    from emailsync.commands import status
    from emailsync.store import db, schema

    with db.connected(config.database) as engine:
        # On a host not yet upgraded too: it reads a newer schema (steps only add) to show who awaits an upgrade.
        schema.check_ready(engine, config.users, writing=False, newer=True)
        report = status.gather(engine, config)
    if args.json:
        print(json.dumps(report.as_json(), indent=2, default=str))
    else:
        print(status.render(report, status.terminal_width(sys.stdout)))
    return EXIT_OK if report.healthy else EXIT_NO


def _check(path: str | None) -> int:
    from emailsync.commands import check
    from emailsync.errors import ConfigError

    try:
        checks = check.run_checks(_load_config(path, "check"))
    except ConfigError as error:  # the file itself: missing, unreadable, not TOML
        checks = check.run_checks(None, error.problems)
    for one in checks:
        print(one.line())
    return EXIT_OK if all(one.ok or one.warning for one in checks) else EXIT_NO


def _sync(config: Config, args: argparse.Namespace) -> int:
    from emailsync.commands import operations
    from emailsync.model import Kind

    outcome = operations.sync_user(config, args.user)
    return EXIT_OK if outcome.kind is Kind.SYNCED else EXIT_NO


def _users(config: Config, args: argparse.Namespace) -> int:
    from emailsync.commands import operations

    rows = operations.list_users(config, args.which, args.limit)
    print("\n".join(rows) if rows else "(none)")
    return EXIT_OK


def _reset(config: Config, args: argparse.Namespace) -> int:
    import structlog

    from emailsync.commands import operations

    count = operations.reset(config, None if args.all_failing else args.user)
    structlog.get_logger().info("backoff_reset", users=count)
    return EXIT_OK


def _fleet_mode(config: Config, args: argparse.Namespace) -> int:
    from emailsync.commands import operations
    from emailsync.store import control

    mode = {"pause": control.PAUSED, "drain": control.DRAINING, "resume": control.RUNNING}[args.command]
    operations.set_fleet_mode(config, mode, getattr(args, "reason", None))
    return EXIT_OK


def _park(config: Config, args: argparse.Namespace) -> int:
    from emailsync.commands import operations

    operations.park(config, args.user, args.reason)
    return EXIT_OK


def _unpark(config: Config, args: argparse.Namespace) -> int:
    from emailsync.commands import operations

    operations.unpark(config, args.user)
    return EXIT_OK


def _alert(config: Config, args: argparse.Namespace) -> int:
    from emailsync.report import alert

    alert.on_failure(config, args.unit, os.environ)
    return EXIT_OK


def _config(form: str) -> int:
    from emailsync.config import reference

    renderings = {"sample": reference.sample, "starter": reference.starter, "markdown": reference.markdown}
    sys.stdout.write(renderings[form]())
    return EXIT_OK


def entry() -> None:
    """The console script. Start-up makes a great many objects (modules, classes, SQLAlchemy's tables) that live
    until the process ends; the garbage collector would walk them over and over while they are imported and once more
    at exit, a large share of the CPU of a run with nobody due (docs/speed.md). So it is off while they are made, and
    they are out of its sight at exit (gc.freeze)."""
    gc.disable()
    code = main()
    gc.freeze()
    sys.exit(code)


def _start_up_done() -> None:
    """A run lasts as long as its work: from here the collector is on, for what the work makes only (the
    objects of start-up are frozen out of its sight). In-process callers of main() keep their collector as is."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


if __name__ == "__main__":
    entry()
