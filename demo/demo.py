"""`make demo`: real cycles on a SQLite app database (embedded: no server to set up), against a stand-in backend.

It creates an app database with sample users, starts the stand-in backend on 127.0.0.1 (every 7th call answers
500, to show failures and backoff), runs `email-sync migrate` and two `email-sync run` cycles exactly as systemd
would start them, shows their JSON log, then what they left in the database.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.app_database import USERS_TABLE, email  # noqa: E402 -- the repository root is on the path only now

EMAIL_SYNC = Path(sys.executable).parent / "email-sync"


def create_app_database(path: Path) -> None:
    """The app's users table: 8 never synced, 8 synced 2 hours ago (due), 4 synced 10 minutes ago (not due)."""
    with sqlite3.connect(path) as connection:
        connection.execute(USERS_TABLE["sqlite"])
        ages = [None] * 8 + ["-2 hours"] * 8 + ["-10 minutes"] * 4
        for number, age in enumerate(ages, start=1):
            connection.execute(
                "INSERT INTO users VALUES (?, ?, CASE WHEN ? IS NULL THEN NULL "
                "ELSE strftime('%Y-%m-%d %H:%M:%f', 'now', ?) END)",
                (number, email(number), age, age),
            )


def start_backend() -> tuple[subprocess.Popen[str], str]:
    backend = subprocess.Popen(
        [sys.executable, "-m", "harness.backend", "--port", "0", "--latency", "0.05", "--fail-every", "7"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert backend.stdout is not None
    line = backend.stdout.readline().strip()
    if not line.startswith("listening on "):
        backend.kill()
        raise SystemExit(f"the stand-in backend did not start: {line!r}")
    return backend, line.removeprefix("listening on ")


def email_sync(config: Path, command: str) -> int:
    print(f"\n$ email-sync --config {config.name} {command}", flush=True)
    return subprocess.run([str(EMAIL_SYNC), "--config", str(config), command], check=False).returncode


def show(database: Path) -> None:
    with sqlite3.connect(database) as connection:
        print("\nusers (the app's table; email-sync only ever writes last_sync):")
        for row in connection.execute(
            "SELECT u.id, u.email, u.last_sync, coalesce(s.failures, 0), s.next_attempt_at "
            "FROM users u LEFT JOIN email_sync_user_state s ON s.user_id = CAST(u.id AS TEXT) ORDER BY u.id"
        ):
            user, address, last_sync, failures, retry = row
            note = f"failed {failures}x, retry after {retry}" if failures else ""
            print(f"  {user:>3} {address:<22} last_sync={last_sync or '-':<24} {note}")
        print("\nruns (email_sync_runs):")
        for run in connection.execute(
            "SELECT started_at, due, synced, failed, skipped, outcome FROM email_sync_runs ORDER BY started_at"
        ):
            print("  started {} due={} synced={} failed={} skipped={} outcome={}".format(*run))


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="email-sync-demo-") as directory:
        database = Path(directory, "app.db")
        create_app_database(database)
        backend, url = start_backend()
        try:
            config = Path(directory, "email-sync.toml")
            config.write_text(
                f'[database]\nurl = "sqlite:///{database}"\n\n'
                f'[backend]\nbase_url = "{url}"\nconcurrency = 4\n\n'
                "[sync]\nmax_emails = 50\n"
            )
            print(f"demo: app database {database}, stand-in backend {url} (every 7th call fails with 500)")
            codes = [email_sync(config, "migrate"), email_sync(config, "run"), email_sync(config, "run")]
            show(database)
        finally:
            backend.terminate()
            backend.wait(timeout=10)
    print(f"\nexit codes: migrate={codes[0]} run={codes[1]} run again={codes[2]} (0 = the cycle ran)")
    return 0 if codes == [0, 0, 0] else 1


if __name__ == "__main__":
    sys.exit(main())
