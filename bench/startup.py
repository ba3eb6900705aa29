"""The CPU cost of an empty `email-sync run` (docs/speed.md's goal: nobody due, <= 0.3 s of CPU, start-up included).

Not a test: it measures. Creates a uniquely named PostgreSQL database on 127.0.0.1:5432 (user postgres, trust) with
the app's users table, all of them synced a moment ago (so nobody is due), runs `email-sync migrate`, serves the
stand-in backend (harness/backend.py) in this process for the health check, then runs `email-sync run` ``--runs`` times,
each a fresh process as the timer starts it, and prints the median user+sys CPU seconds of those processes
(os.wait4: the email-sync process alone). CPU time, not wall time: the machine may be busy, CPU time barely moves.
emailsync/ is byte-compiled first, as the package's postinst does: a checkout run with PYTHONDONTWRITEBYTECODE=1
would otherwise compile it in every process.

    .venv/bin/python bench/startup.py                 # 9 runs, the median and every run
    .venv/bin/python bench/startup.py --runs 5 --users 10000
    .venv/bin/python bench/startup.py --command status  # any other command, same setup
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import psycopg2

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from harness.app_database import USERS_TABLE, numbered_users  # noqa: E402 -- harness/ is on the path only now
from harness.backend import Backend  # noqa: E402

VENV_BIN = Path(os.environ.get("BENCH_VENV_BIN", Path(sys.executable).parent))  # as bench/bench.py's
EMAIL_SYNC = VENV_BIN / "email-sync"
ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres sslmode=disable"


def admin(sql: str) -> None:
    connection = psycopg2.connect(ADMIN_DSN)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(sql)
    connection.close()


def seed(dbname: str, users: int) -> None:
    connection = psycopg2.connect(ADMIN_DSN.replace("dbname=postgres", f"dbname={dbname}"))
    with connection, connection.cursor() as cursor:
        cursor.execute(USERS_TABLE["postgresql"])
        cursor.execute(numbered_users("1", "%s", last_sync="now()"), (users,))
    connection.close()


def cpu_of(argv: list[str]) -> tuple[float, float, int]:
    """(user, sys, exit code) of one process."""
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    return usage.ru_utime, usage.ru_stime, os.waitstatus_to_exitcode(status)


def compile_as_installed() -> Path:
    """Byte-compile the emailsync package of the measured venv, as the package's postinst does; returns its
    directory (PYTHONPATH, if set, decides which one that is)."""
    code = (
        "import compileall, emailsync, os; where = os.path.dirname(emailsync.__file__); "
        "compileall.compile_dir(where, quiet=1); print(where)"
    )
    # -P: not the current directory (a checkout's emailsync/ would shadow the venv's), as the email-sync script does
    done = subprocess.run([str(VENV_BIN / "python"), "-P", "-c", code], check=True, capture_output=True, text=True)
    return Path(done.stdout.strip())


def measure(runs: int, users: int, command: str = "run") -> list[tuple[float, float, float]]:
    """(user+sys, user, sys) CPU seconds of ``runs`` fresh `email-sync COMMAND` processes, nobody due."""
    dbname = f"email_sync_startup_{uuid.uuid4().hex[:10]}"
    admin(f'CREATE DATABASE "{dbname}"')
    try:
        seed(dbname, users)
        with tempfile.TemporaryDirectory() as workdir, Backend() as backend:
            config = Path(workdir) / "email-sync.toml"
            config.write_text(
                f'[database]\nurl = "postgresql://postgres@127.0.0.1:5432/{dbname}"\n\n'
                f'[backend]\nbase_url = "{backend.base_url}"\nconcurrency = 32\n\n'
                '[sync]\ninterval = "1h"\n'
            )
            argv = [str(EMAIL_SYNC), "--config", str(config)]
            if cpu_of([*argv, "migrate"])[2] != 0:
                raise SystemExit("email-sync migrate failed")
            samples = []
            for _ in range(runs):
                user, system, code = cpu_of([*argv, command])
                if code != 0:
                    raise SystemExit(f"email-sync {command} exited {code}")
                samples.append((user + system, user, system))
            if command == "run" and backend.sync_calls():
                raise SystemExit("somebody was due: the measurement is not of an empty run")
    finally:
        admin(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--users", type=int, default=1000, help="users in the app's table, none of them due")
    parser.add_argument("--command", default="run", help="the email-sync command to measure (default: run)")
    args = parser.parse_args()
    compile_as_installed()
    samples = measure(args.runs, args.users, args.command)
    total = statistics.median(s[0] for s in samples)
    print(f"email-sync {args.command}, {args.runs} runs, nobody due: median CPU {total:.3f} s (user+sys)")
    print("runs: " + ", ".join(f"{s[0]:.3f} ({s[1]:.3f}+{s[2]:.3f})" for s in samples))


if __name__ == "__main__":
    main()
