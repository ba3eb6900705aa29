"""email-sync benchmark: one real `email-sync run` per measurement, as systemd would start it.

Not a test: it measures and reports. For every scenario it creates a uniquely named PostgreSQL database on
127.0.0.1:5432 (user postgres, trust auth), seeds N users with one INSERT ... SELECT generate_series, runs
`email-sync migrate`, then per repetition: resets the users (last_sync NULL, email-sync's state emptied, VACUUM
ANALYZE), runs ONE `email-sync run` (the installed CLI, a subprocess, with a config file written here), resets
again and runs the BASELINE (bench/baseline.py: the original sequential loop) on a sample of the same users.
Last, the CPU of an empty run (nobody due; bench/startup.py). The goals are docs/speed.md's, on whole processes.

The backend is harness/fast_backend.py (asyncio, keep-alive, fixed latency) in its own process; its capacity is measured
first with bench/loadgen.py (in other processes). Database statements are counted on the wire by bench/pgproxy.py
(a counting TCP proxy between email-sync and PostgreSQL), transactions by pg_stat_database.xact_commit.

    make bench                      # the full default (about 10-15 minutes)
    make bench BENCH_ARGS=--quick   # smaller N, R=1 (about 1-2 minutes)
    .venv/bin/python bench/bench.py --only c --repeats 1 --profile

Options also come from the environment: BENCH_QUICK=1, BENCH_REPEATS, BENCH_ONLY, BENCH_PROFILE=1.
Writes bench/results/<timestamp>.json (gitignored) and prints its path.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg2

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from harness.app_database import USERS_TABLE, numbered_users  # noqa: E402 -- harness/ is on the path only now

VENV_BIN = Path(os.environ.get("BENCH_VENV_BIN", ROOT / ".venv" / "bin"))
EMAIL_SYNC = VENV_BIN / "email-sync"
PYTHON = VENV_BIN / "python"
RIG_PYTHON = Path(sys.executable)  # the stand-in, the proxy, the load generator, the baseline: not what is measured
PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
ADMIN_DSN = f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname=postgres sslmode=disable"
RUN_TIMEOUT = 900.0  # seconds: no single email-sync run may take longer (it is killed, the benchmark fails)
EMPTY_RUN_CPU_GOAL = 0.3  # seconds of CPU for a run that finds nobody due (docs/speed.md)
SAMPLE_EVERY = 0.1  # seconds between /proc and pg_stat_activity samples
MEASURED: list[Path] = []  # the emailsync/ directory the measured venv imports, found (and compiled) at start


@dataclass
class Scenario:
    name: str
    title: str
    users: int
    concurrency: int
    latency: float
    baseline: bool = True
    goal_rate_fraction: float | None = None  # of the bound
    goal_rate: float | None = None  # users/s
    goal_vs_baseline: float | None = None
    goal_rss_mb: float | None = None  # peak RSS of the email-sync process
    info_run: bool = False  # one extra run at logging.level=info
    rss_only: bool = False  # scenario d: repeated --rss-repeats times (RSS barely varies; N=100,000 takes minutes)


def scenarios(quick: bool) -> list[Scenario]:
    """Issue 14's goals, each judged on whole processes (start-up included, the rate over the process's life), with
    enough users that a run lasts tens of seconds, as the issue's harness measured."""
    k = 10 if quick else 1
    return [
        Scenario("c", "latency 0, concurrency 32", 30_000 // k, 32, 0.0, goal_rate=2000, info_run=True),
        Scenario(
            "a", "concurrency 32, latency 50 ms", 25_000 // k, 32, 0.05, goal_rate_fraction=0.95, goal_vs_baseline=25
        ),
        Scenario("b", "concurrency 256, latency 500 ms", 20_000 // k, 256, 0.5, goal_rate_fraction=0.95),
        Scenario(
            "e",
            "concurrency 1024, latency 2 s",
            20_000 // k,
            1024,
            2.0,
            baseline=False,
            goal_rate_fraction=0.90,
            goal_rss_mb=150,
        ),
        Scenario("d10k", "RSS (small N), latency 0", 10_000 // k, 32, 0.0, baseline=False, rss_only=True),
        Scenario("d100k", "RSS (10x N), latency 0", 100_000 // k, 32, 0.0, baseline=False, rss_only=True),
    ]


# --------------------------------------------------------------------------------------------- processes


def clean_env() -> dict[str, str]:
    """The environment for email-sync: no systemd sockets, no EMAIL_SYNC_* overrides leaking in."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("EMAIL_SYNC_", "NOTIFY_SOCKET", "WATCHDOG_", "JOURNAL_STREAM", "LISTEN_"))
    }


class Child:
    """A helper process that prints its port on its first stdout line; stopped with SIGTERM."""

    def __init__(self, args: list[str], what: str) -> None:
        self.what = what
        self.process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.process.stdout.readline() if self.process.stdout else ""
        if not line.strip().isdigit():
            self.process.kill()
            error = self.process.stderr.read() if self.process.stderr else ""
            raise RuntimeError(f"{what} did not start: {line!r} {error}")
        self.port = int(line)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


class Backend(Child):
    def __init__(self, latency: float) -> None:
        super().__init__(
            [str(RIG_PYTHON), "-m", "harness.fast_backend", "--latency", str(latency), "--max-seconds", "3600"],
            "backend",
        )
        self.latency = latency

    def stats(self) -> dict[str, Any]:
        return self._get("/_stats")

    def turnaround(self) -> dict[str, Any]:
        """The client's turnaround between two calls on a connection since the last asking (fast_backend.py's)."""
        return self._get("/_turnaround")

    def _get(self, path: str) -> dict[str, Any]:
        import http.client

        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request("GET", path)
            return json.loads(connection.getresponse().read())
        finally:
            connection.close()


def loadgen(port: int, connections: int, duration: float, procs: int) -> dict[str, Any]:
    out = subprocess.run(
        [
            str(RIG_PYTHON),
            str(HERE / "loadgen.py"),
            "--port",
            str(port),
            "--connections",
            str(connections),
            "--duration",
            str(duration),
            "--procs",
            str(procs),
        ],
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------- database


def admin(sql: str, *params: Any, dbname: str = "postgres") -> list[tuple[Any, ...]]:
    connection = psycopg2.connect(ADMIN_DSN.replace("dbname=postgres", f"dbname={dbname}"))
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql, params or None)
            return cursor.fetchall() if cursor.description else []
    finally:
        connection.close()


class BenchDb:
    def __init__(self, users: int) -> None:
        self.name = f"email_sync_bench_{uuid.uuid4().hex[:10]}"
        admin(f'CREATE DATABASE "{self.name}"')
        self.sql(USERS_TABLE["postgresql"])
        self.sql(numbered_users("1", "%s"), users)
        self.users = users

    def url(self, port: int) -> str:
        return f"postgresql://{PG_USER}@{PG_HOST}:{port}/{self.name}?sslmode=disable"

    def dsn(self) -> str:
        return ADMIN_DSN.replace("dbname=postgres", f"dbname={self.name}")

    def sql(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        return admin(sql, *params, dbname=self.name)

    def reset(self) -> None:
        """Everyone due again, email-sync's state empty, tables vacuumed, dirty pages flushed: every run starts
        from the same data, and none pays for the previous run's writes."""
        self.sql("UPDATE users SET last_sync = NULL WHERE last_sync IS NOT NULL")
        if self.sql("SELECT to_regclass('email_sync_user_state')")[0][0]:
            self.sql("TRUNCATE email_sync_user_state, email_sync_runs")
            self.sql("VACUUM ANALYZE email_sync_user_state")
        self.sql("VACUUM ANALYZE users")
        self.sql("CHECKPOINT")

    def xacts(self) -> tuple[int, int]:
        rows = admin("SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = %s", self.name)
        return int(rows[0][0]), int(rows[0][1])

    def drop(self) -> None:
        admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


# --------------------------------------------------------------------------------------------- one run


def write_config(
    path: Path, db_url: str, backend_port: int, concurrency: int, users: int, batch: int, level: str
) -> Path:
    path.write_text(
        f"""[database]
url = "{db_url}"

[backend]
base_url = "http://127.0.0.1:{backend_port}"
concurrency = {concurrency}

[sync]
batch_size = {batch}
max_users_per_run = {max(users, 1)}

[logging]
level = "{level}"
"""
    )
    return path


class Sampler(threading.Thread):
    """Polls the email-sync process (/proc: threads, RSS) and PostgreSQL (its connections) until stopped."""

    def __init__(self, pid: int, dbname: str) -> None:
        super().__init__(daemon=True)
        self.pid, self.dbname = pid, dbname
        self.halt = threading.Event()
        self.peak_threads = 0
        self.peak_rss_kb = 0
        self.peak_hwm_kb = 0
        self.peak_pg_connections = 0
        self.samples = 0
        self.pg_cpu_ticks: dict[int, int] = {}  # PostgreSQL backend pid (email-sync's connections) -> utime+stime

    def run(self) -> None:
        connection = psycopg2.connect(ADMIN_DSN, application_name="email-sync-bench-sampler")
        connection.autocommit = True
        deadline = time.monotonic() + RUN_TIMEOUT
        try:
            with connection.cursor() as cursor:
                while not self.halt.is_set() and time.monotonic() < deadline:
                    try:
                        status = Path(f"/proc/{self.pid}/status").read_text()
                    except OSError:
                        break
                    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
                    self.peak_threads = max(self.peak_threads, int(fields.get("Threads", "0")))
                    self.peak_rss_kb = max(self.peak_rss_kb, int(fields.get("VmRSS", "0 kB").split()[0]))
                    self.peak_hwm_kb = max(self.peak_hwm_kb, int(fields.get("VmHWM", "0 kB").split()[0]))
                    cursor.execute(
                        "SELECT pid FROM pg_stat_activity WHERE application_name = 'email-sync' AND datname = %s",
                        (self.dbname,),
                    )
                    pids = [row[0] for row in cursor.fetchall()]
                    self.peak_pg_connections = max(self.peak_pg_connections, len(pids))
                    for backend_pid in pids:
                        self.pg_cpu_ticks[backend_pid] = max(
                            self.pg_cpu_ticks.get(backend_pid, 0), process_cpu_ticks(backend_pid)
                        )
                    self.samples += 1
                    self.halt.wait(SAMPLE_EVERY)
        finally:
            connection.close()


def process_cpu_ticks(pid: int) -> int:
    """utime + stime of one process, in clock ticks (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0
    return int(fields[11]) + int(fields[12])


TICK = os.sysconf("SC_CLK_TCK")


def cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return float(sum(values) - idle), float(sum(values))


def background_cpu(seconds: float = 1.0) -> float:
    """How busy the machine is with others' work while the benchmark is quiet (shared machines: other test runs
    make the numbers noisy; this says how much)."""
    busy0, total0 = cpu_times()
    time.sleep(seconds)
    busy1, total1 = cpu_times()
    return (busy1 - busy0) / max(total1 - total0, 1.0)


def emailsync_source_hash(package: Path) -> str:
    """Which email-sync code a run measured: others may edit an editable install's emailsync/ meanwhile."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):  # the subpackages' modules too
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def email_sync_run(
    db: BenchDb,
    backend: Backend,
    scenario: Scenario,
    batch: int,
    level: str,
    workdir: Path,
    wrap: list[str] | None = None,
) -> dict[str, Any]:
    """ONE real `email-sync run` through the counting proxy; returns its measurements."""
    counts_file = workdir / f"pgproxy-{uuid.uuid4().hex[:6]}.json"
    background = background_cpu()
    source = emailsync_source_hash(MEASURED[0])
    proxy = Child(
        [str(RIG_PYTHON), str(HERE / "pgproxy.py"), "--out", str(counts_file), "--max-seconds", str(RUN_TIMEOUT + 60)],
        "pgproxy",
    )
    config = write_config(
        workdir / "email-sync.toml",
        db.url(proxy.port),
        backend.port,
        scenario.concurrency,
        scenario.users,
        batch,
        level,
    )
    log_path = workdir / f"email-sync-{level}.log"
    before_backend = backend.stats()["syncs"]
    backend.turnaround()  # forget what came before this run
    backend_ticks = process_cpu_ticks(backend.process.pid)
    xact_before = db.xacts()
    busy0, total0 = cpu_times()
    started = time.monotonic()
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [*(wrap or []), str(EMAIL_SYNC), "--config", str(config), "run"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=clean_env(),
        )
    pid = process.pid
    if wrap:  # py-spy is the child; sample its child, the email-sync process
        pid = wait_for_grandchild(pid)
    sampler = Sampler(pid, db.name)
    sampler.start()
    timer = threading.Timer(RUN_TIMEOUT, process.kill)
    timer.start()
    try:
        # wait4 on this pid: the resource usage of the email-sync process alone (it starts no children).
        _, status, usage = os.wait4(process.pid, 0)
    finally:
        timer.cancel()
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - started
    busy1, total1 = cpu_times()
    sampler.halt.set()
    sampler.join(10)
    backend_ticks = process_cpu_ticks(backend.process.pid) - backend_ticks
    proxy_ticks = process_cpu_ticks(proxy.process.pid)
    proxy.stop()
    time.sleep(0.7)  # backends flush their statistics when they exit
    xact_after = db.xacts()
    statements = json.loads(counts_file.read_text()) if counts_file.exists() else {}
    run_row = db.sql(
        "SELECT synced, failed, skipped, due, outcome, extract(epoch FROM finished_at - started_at) "
        "FROM email_sync_runs"
    )
    synced_rows = db.sql("SELECT count(*) FROM users WHERE last_sync IS NOT NULL")[0][0]
    backend_calls = backend.stats()["syncs"] - before_backend
    turnaround = backend.turnaround()
    if process.returncode != 0 or not run_row:
        tail = log_path.read_text()[-3000:]
        raise RuntimeError(f"email-sync run exited {process.returncode}:\n{tail}")
    synced, failed, skipped, due, outcome, cycle_s = run_row[0]
    users = scenario.users
    result = {
        "emailsync_source": source,
        "exit_code": process.returncode,
        "outcome": outcome,
        "due": due,
        "synced": synced,
        "failed": failed,
        "skipped": skipped,
        "users_with_last_sync": synced_rows,
        "backend_calls": backend_calls,
        "wall_s": wall,
        "cycle_s": float(cycle_s),
        "rate": synced / float(cycle_s) if cycle_s else 0.0,
        "rate_wall": synced / wall,
        # ru_maxrss: KiB on Linux. Under py-spy (wrap) it would be py-spy's; use /proc's VmHWM there.
        "peak_rss_mb": (sampler.peak_hwm_kb if wrap else usage.ru_maxrss) / 1024,
        "peak_rss_mb_proc_vmhwm": sampler.peak_hwm_kb / 1024,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "cpu_user_s": usage.ru_utime,
        "cpu_sys_s": usage.ru_stime,
        "cpu_ms_per_user": 1000 * (usage.ru_utime + usage.ru_stime) / max(synced, 1),
        "pg_cpu_ms_per_user": 1000 * sum(sampler.pg_cpu_ticks.values()) / TICK / max(synced, 1),
        "backend_cpu_ms_per_user": 1000 * backend_ticks / TICK / max(synced, 1),
        "pgproxy_cpu_ms_per_user": 1000 * proxy_ticks / TICK / max(synced, 1),
        "machine_cpu_busy": (busy1 - busy0) / max(total1 - total0, 1.0),
        "background_cpu_busy_before": background,
        "voluntary_ctx_switches": usage.ru_nvcsw,
        "involuntary_ctx_switches": usage.ru_nivcsw,
        "peak_threads": sampler.peak_threads,
        "peak_pg_connections": sampler.peak_pg_connections,
        "samples": sampler.samples,
        "transactions": xact_after[0] - xact_before[0],
        "rollbacks": xact_after[1] - xact_before[1],
        "transactions_per_user": (xact_after[0] - xact_before[0]) / max(synced, 1),
        "db": statements,
        "statements_per_user": statements.get("statements", 0) / max(synced, 1),
        "statements_per_user_excl_begin_commit": statements.get("statements_excluding_begin_commit", 0)
        / max(synced, 1),
        "round_trips_per_user": statements.get("round_trips", 0) / max(synced, 1),
        "client_turnaround_ms": turnaround,
        "log_lines": log_path.read_bytes().count(b"\n"),
        "log_bytes": log_path.stat().st_size,
    }
    problems = []
    if synced != users or synced_rows != users:
        problems.append(f"synced {synced} (rows {synced_rows}) of {users}")
    if backend_calls != synced:
        problems.append(f"backend got {backend_calls} calls for {synced} synced users")
    result["problems"] = problems
    return result


def turnaround_text(summary: dict[str, Any]) -> str:
    """A client's turnaround between calls (fast_backend.py's /_turnaround) in a few words."""
    if not summary.get("count"):
        return "-"
    return f"ms p50 {summary['p50_ms']:.2f}, p90 {summary['p90_ms']:.2f}, p99 {summary['p99_ms']:.2f}"


def wait_for_grandchild(pid: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            children = []
        if children:
            return int(children[0])
        time.sleep(0.01)
    return pid


def baseline_run(db: BenchDb, backend: Backend, limit: int) -> dict[str, Any]:
    out = subprocess.run(
        [
            str(RIG_PYTHON),
            str(HERE / "baseline.py"),
            "--dsn",
            db.dsn(),
            "--url",
            f"http://127.0.0.1:{backend.port}/api/v1/sync/start",
            "--limit",
            str(limit),
            "--max-seconds",
            "300",
        ],
        capture_output=True,
        text=True,
        timeout=400,
        check=True,
        env=clean_env(),
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def migrate(db: BenchDb, workdir: Path, backend: Backend, scenario: Scenario) -> None:
    config = write_config(
        workdir / "email-sync.toml", db.url(PG_PORT), backend.port, scenario.concurrency, scenario.users, 100, "warning"
    )
    subprocess.run(
        [str(EMAIL_SYNC), "--config", str(config), "migrate"],
        check=True,
        capture_output=True,
        timeout=120,
        env=clean_env(),
    )


# --------------------------------------------------------------------------------------------- facts & report


def machine_facts() -> dict[str, Any]:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    email_sync_version = subprocess.run([str(EMAIL_SYNC), "--version"], capture_output=True, text=True).stdout
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "emailsync"], capture_output=True, text=True
    )
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": subprocess.run([str(PYTHON), "-VV"], capture_output=True, text=True).stdout.strip(),
        "postgresql": admin("SELECT version()")[0][0],
        "email_sync": email_sync_version.strip(),
        "git_head": git.stdout.strip(),
        "emailsync_dirty": bool(dirty.stdout.strip()),
        "emailsync_measured": str(MEASURED[0]),
        "emailsync_measured_is_the_tree": emailsync_source_hash(MEASURED[0])
        == emailsync_source_hash(ROOT / "emailsync"),
    }


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(runs: list[dict[str, Any]]) -> dict[str, float]:
    keys = [
        "rate",
        "rate_wall",
        "cycle_s",
        "wall_s",
        "peak_rss_mb",
        "cpu_s",
        "cpu_ms_per_user",
        "machine_cpu_busy",
        "pg_cpu_ms_per_user",
        "backend_cpu_ms_per_user",
        "pgproxy_cpu_ms_per_user",
        "background_cpu_busy_before",
        "peak_threads",
        "peak_pg_connections",
        "transactions_per_user",
        "statements_per_user",
        "statements_per_user_excl_begin_commit",
        "round_trips_per_user",
    ]
    return {k: median([r[k] for r in runs]) for k in keys}


def print_table(report: dict[str, Any]) -> None:
    print()
    cap = report["backend_capacity"]
    print(
        f"backend capacity at latency 0: {cap['rate']:,.0f} req/s "
        f"({cap['connections']} keep-alive connections from {cap['procs']} load-generator processes, "
        f"{cap['seconds']:.0f} s)"
    )
    head = (
        f"{'scen':5} {'N':>7} {'conc':>4} {'lat':>6} {'users/s':>8} {'wall/s':>7} {'bound':>6} {'eff':>5} "
        f"{'base/s':>7} {'x base':>6} {'RSS MB':>6} {'thr':>4} {'pgc':>3} {'st/u':>5} {'tx/u':>5} "
        f"{'cpu ms/u':>8} {'pg ms/u':>7} {'goal':>5}"
    )
    print(head)
    print("-" * len(head))
    for s in report["scenarios"]:
        m = s["median"]
        base = s.get("baseline_rate_median")
        ratio = m["rate"] / base if base else None
        bound = f"{s['bound']:.0f}" if s["bound"] else "-"
        eff = f"{s['efficiency']:.0%}" if s["efficiency"] else "-"
        print(
            f"{s['name']:5} {s['users']:>7,} {s['concurrency']:>4} {s['latency'] * 1000:>4.0f}ms {m['rate']:>8.0f} "
            f"{m['rate_wall']:>7.0f} {bound:>6} {eff:>5} "
            f"{f'{base:.1f}' if base else '-':>7} {f'{ratio:.1f}' if ratio else '-':>6} "
            f"{m['peak_rss_mb']:>6.1f} {m['peak_threads']:>4.0f} {m['peak_pg_connections']:>3.0f} "
            f"{m['statements_per_user']:>5.3f} {m['transactions_per_user']:>5.3f} {m['cpu_ms_per_user']:>8.2f} "
            f"{m['pg_cpu_ms_per_user']:>7.2f} "
            f"{s['goal_verdict']:>5}"
        )
    print(
        "users/s: synced / (finished_at - started_at) of the run row (the cycle, after preflight); wall/s: synced /"
        " the process's whole life (interpreter start, imports, preflight included)."
    )
    print(
        "bound = min(concurrency / latency, median wall/s of scenario c at latency 0); eff = wall/s / bound, and the "
        "goals are judged on wall/s; base/s: the original sequential loop on a sample (see baseline_sample), "
        "x base = users/s / base/s."
    )
    print(
        "st/u: SQL statements per user on the wire (pgproxy; BEGIN/COMMIT included), tx/u: committed "
        "transactions per user (pg_stat_database); thr/pgc: peak threads of the email-sync process / peak "
        "PostgreSQL connections with application_name=email-sync; cpu ms/u: CPU of the email-sync process per "
        "user (wait4 rusage), pg ms/u: CPU of its PostgreSQL backends per user (/proc)."
    )
    for s in report["scenarios"]:
        for note in s["notes"]:
            print(f"  {s['name']}: {note}")
    for note in report["notes"]:
        print(f"  {note}")


# --------------------------------------------------------------------------------------------- main


def run_scenario(
    sc: Scenario, args: argparse.Namespace, latency0_rate: float | None, capacity: float, workdir: Path
) -> dict[str, Any]:
    print(f"\n== {sc.name}: {sc.title}, N={sc.users:,} ==", flush=True)
    db = BenchDb(sc.users)
    backend = Backend(sc.latency)
    notes: list[str] = []
    out: dict[str, Any] = {
        "name": sc.name,
        "title": sc.title,
        "users": sc.users,
        "concurrency": sc.concurrency,
        "latency": sc.latency,
        "batch_size": args.batch_size,
        "database": db.name,
    }
    try:
        migrate(db, workdir, backend, sc)
        if sc.latency > 0:  # can the backend itself hold concurrency/latency? (a loadgen at the same shape)
            backend.turnaround()
            check = loadgen(backend.port, sc.concurrency, max(2.0, 4 * sc.latency), 1)
            check["client_turnaround_ms"] = backend.turnaround()
            out["backend_check"] = check
            ideal = sc.concurrency / sc.latency
            print(
                f"  backend alone at concurrency {sc.concurrency}, latency {sc.latency * 1000:.0f} ms: "
                f"{check['rate']:,.0f} req/s ({check['rate'] / ideal:.0%} of {ideal:,.0f}), "
                f"load generator's turnaround {turnaround_text(check['client_turnaround_ms'])}",
                flush=True,
            )
        runs, baselines = [], []
        for repetition in range(args.rss_repeats if sc.rss_only else args.repeats):
            db.reset()
            run = email_sync_run(db, backend, sc, args.batch_size, "warning", workdir)
            runs.append(run)
            print(
                f"  run {repetition + 1}: {run['rate']:,.0f} users/s (wall {run['rate_wall']:,.0f}), "
                f"{run['cycle_s']:.2f} s cycle, RSS {run['peak_rss_mb']:.1f} MB, threads {run['peak_threads']}, "
                f"pg conns {run['peak_pg_connections']}, {run['statements_per_user']:.3f} statements/user, "
                f"cpu ms/user: email-sync {run['cpu_ms_per_user']:.2f}, postgres {run['pg_cpu_ms_per_user']:.2f}, "
                f"backend {run['backend_cpu_ms_per_user']:.2f}, proxy {run['pgproxy_cpu_ms_per_user']:.2f}; "
                f"turnaround {turnaround_text(run['client_turnaround_ms'])}; "
                f"machine busy {run['machine_cpu_busy']:.0%} "
                f"(others' load just before: {run['background_cpu_busy_before']:.0%})"
                + (f"  PROBLEMS: {run['problems']}" if run["problems"] else ""),
                flush=True,
            )
            if sc.baseline and not args.no_baseline:
                db.reset()
                sample = min(sc.users, max(20, int(args.baseline_seconds / (sc.latency + 0.004))))
                base = baseline_run(db, backend, sample)
                base["sample"] = sample
                baselines.append(base)
                print(
                    f"  baseline {repetition + 1}: {base['rate']:,.1f} users/s on a sample of {sample} users "
                    f"({base['seconds']:.1f} s)",
                    flush=True,
                )
        out["runs"] = runs
        out["median"] = summarize(runs)
        if baselines:
            out["baseline_runs"] = baselines
            out["baseline_rate_median"] = median([b["rate"] for b in baselines])
            out["baseline_sample"] = baselines[0]["sample"]
            notes.append(
                f"baseline measured on the first {baselines[0]['sample']} of {sc.users:,} due users "
                "(a sequential loop's rate does not depend on the count); the ratio uses that rate"
            )
        if sc.info_run and not args.no_info:
            db.reset()
            info = email_sync_run(db, backend, sc, args.batch_size, "info", workdir)
            out["info_run"] = info
            cost = 1 - info["rate"] / out["median"]["rate"]
            notes.append(
                f"one run at logging.level=info (JSON lines to a file, {info['log_lines']:,} lines, "
                f"{info['log_bytes'] / 1e6:.1f} MB): {info['rate']:,.0f} users/s, "
                f"cpu {info['cpu_ms_per_user']:.2f} ms/user: logging costs {cost:.0%} of the rate"
            )
        noisy = [r["background_cpu_busy_before"] for r in runs if r["background_cpu_busy_before"] > 0.1]
        if noisy:
            notes.append(
                f"WARNING: the machine was busy with other work before {len(noisy)} of {len(runs)} runs "
                f"(up to {max(noisy):.0%} of its CPUs): these numbers understate email-sync"
            )
        problems = [p for r in runs for p in r["problems"]]
        if problems:
            notes.append(f"PROBLEMS: {problems}")
        if out["median"]["rate"] * 3 > capacity:
            notes.append(
                f"WARNING: the backend's capacity ({capacity:,.0f}/s) is not comfortably above the rate "
                f"measured ({out['median']['rate']:,.0f}/s): the backend may be limiting"
            )
    finally:
        backend.stop()
        db.drop()
    out["notes"] = notes
    return out


def judge(s: dict[str, Any], sc: Scenario, latency0_rate: float | None) -> None:
    """Goals are judged on the whole process's rate (wall/s: interpreter start, imports and preflight included)."""
    rate = s["median"]["rate_wall"]
    # The bound only means something with a latency: at latency 0, email-sync's own rate is what is measured.
    bounds = [b for b in (sc.concurrency / sc.latency, latency0_rate) if b] if sc.latency else []
    s["bound"] = min(bounds) if bounds else None
    s["efficiency"] = rate / s["bound"] if s["bound"] else None
    s["efficiency_cycle"] = s["median"]["rate"] / s["bound"] if s["bound"] else None
    verdicts = []
    if sc.goal_rate_fraction is not None:
        verdicts.append(s["efficiency"] >= sc.goal_rate_fraction)
    if sc.goal_rate is not None:
        verdicts.append(rate >= sc.goal_rate)
    if sc.goal_vs_baseline is not None and s.get("baseline_rate_median"):
        verdicts.append(rate / s["baseline_rate_median"] >= sc.goal_vs_baseline)
    if sc.goal_rss_mb is not None:
        verdicts.append(s["median"]["peak_rss_mb"] <= sc.goal_rss_mb)
    s["goal_verdict"] = "-" if not verdicts else ("met" if all(verdicts) else "MISS")


def profile(args: argparse.Namespace, workdir: Path, outdir: Path) -> dict[str, Any]:
    """Scenario (c) under py-spy: `record --gil` (who holds the GIL), `record --idle` (where every thread waits),
    and `dump` snapshots of a plain run."""
    py_spy = shutil.which("py-spy", path=f"{VENV_BIN}:{RIG_PYTHON.parent}") or shutil.which("py-spy")
    if not py_spy:
        raise SystemExit(f"--profile needs py-spy: {RIG_PYTHON.parent / 'pip'} install py-spy")
    sc = scenarios(args.quick)[0]
    outdir.mkdir(parents=True, exist_ok=True)
    db = BenchDb(sc.users)
    backend = Backend(sc.latency)
    found: dict[str, Any] = {"scenario": sc.name, "users": sc.users, "files": {}}
    try:
        migrate(db, workdir, backend, sc)
        # --gil: only the thread holding the GIL is sampled (where the CPU goes), blocking for exact stacks;
        # --idle: every thread, waiting ones too (where they wait), non-blocking at a lower rate because stopping
        # 33 threads 200 times a second slows the target several-fold.
        for label, extra in (
            ("gil", ["--gil", "--rate", "200"]),
            ("idle", ["--idle", "--rate", "50", "--nonblocking"]),
        ):
            db.reset()
            target = outdir / f"pyspy-{label}.txt"
            wrap = [py_spy, "record", "--format", "raw", "--threads", *extra, "--output", str(target), "--"]
            run = email_sync_run(db, backend, sc, args.batch_size, "warning", workdir, wrap=wrap)
            found[f"run_under_record_{label}"] = {k: run[k] for k in ("rate", "cycle_s", "cpu_ms_per_user")}
            found["files"][label] = str(target)
            print(
                f"  py-spy record {label}: {target} (the run made {run['rate']:,.0f} users/s under sampling)",
                flush=True,
            )
        db.reset()
        dumps = outdir / "pyspy-dumps.txt"
        config = write_config(
            workdir / "email-sync.toml",
            db.url(PG_PORT),
            backend.port,
            sc.concurrency,
            sc.users,
            args.batch_size,
            "warning",
        )
        process = subprocess.Popen(
            [str(EMAIL_SYNC), "--config", str(config), "run"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            env=clean_env(),
        )
        with open(dumps, "w") as f:
            time.sleep(2.0)
            for number in range(3):
                if process.poll() is not None:
                    break
                f.write(f"===== dump {number + 1} at {time.monotonic():.2f}\n")
                f.flush()
                subprocess.run(
                    [py_spy, "dump", "--pid", str(process.pid)], stdout=f, stderr=subprocess.STDOUT, timeout=30
                )
                time.sleep(1.0)
        process.wait(RUN_TIMEOUT)
        found["files"]["dumps"] = str(dumps)
    finally:
        backend.stop()
        db.drop()
    from profile_summary import summarize_raw  # bench/ is on sys.path as the script's folder

    for label in ("gil", "idle"):
        found[f"summary_{label}"] = summarize_raw(Path(found["files"][label]), top=25)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick",
        action="store_true",
        default=os.environ.get("BENCH_QUICK") == "1",
        help="N/10 and R=1 (about a minute or two)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=int(os.environ.get("BENCH_REPEATS", "0")) or None,
        help="repetitions per scenario, medians reported (default 3; --quick: 1)",
    )
    parser.add_argument(
        "--only",
        default=os.environ.get("BENCH_ONLY", ""),
        help="comma-separated scenario names: c,a,b,e,d10k,d100k,empty (default all; d = both d's)",
    )
    parser.add_argument(
        "--rss-repeats",
        type=int,
        default=int(os.environ.get("BENCH_RSS_REPEATS", "1")),
        help="repetitions of the two RSS scenarios d10k/d100k (default 1: RSS barely varies and "
        "N=100,000 takes minutes)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=int(os.environ.get("BENCH_BATCH_SIZE", "100")),
        help="sync.batch_size (default 100, email-sync's default)",
    )
    parser.add_argument(
        "--baseline-seconds",
        type=float,
        default=float(os.environ.get("BENCH_BASELINE_SECONDS", "8")),
        help="about how long one baseline run may take; its sample size follows from the latency",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        default=os.environ.get("BENCH_PROFILE") == "1",
        help="also run scenario c under py-spy (record --gil, record --idle, dumps)",
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the baseline runs")
    parser.add_argument("--no-info", action="store_true", help="skip the extra logging.level=info run of c")
    parser.add_argument("--out", default=os.environ.get("BENCH_OUT", ""), help="JSON path (default bench/results/)")
    args = parser.parse_args()
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    args.repeats = max(1, min(args.repeats, 20))
    args.rss_repeats = max(1, min(args.rss_repeats, 20))
    wanted = {w.strip() for w in args.only.split(",") if w.strip()}
    if "d" in wanted:
        wanted |= {"d10k", "d100k"}
    if not EMAIL_SYNC.exists():
        raise SystemExit(f"{EMAIL_SYNC} is missing: run `make venv` first")
    from startup import compile_as_installed, measure  # bench/ is on sys.path as the script's folder

    MEASURED.append(compile_as_installed())  # every scenario runs email-sync as the package installs it

    began = time.monotonic()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out_path = Path(args.out) if args.out else HERE / "results" / f"{stamp}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    facts = machine_facts()
    print(
        f"machine: {facts['nproc']} CPUs ({facts['cpu_model']}), {facts['python']}, "
        f"{facts['postgresql'].split(' on ')[0]}; email-sync {facts['git_head']}"
        + (" (emailsync/ has uncommitted changes)" if facts["emailsync_dirty"] else "")
        + f"\nmeasured: {EMAIL_SYNC} importing {facts['emailsync_measured']}"
        + ("" if facts["emailsync_measured_is_the_tree"] else " -- NOT the same code as this tree's emailsync/"),
        flush=True,
    )
    report: dict[str, Any] = {"timestamp": stamp, "machine": facts, "options": vars(args), "scenarios": [], "notes": []}
    with tempfile.TemporaryDirectory(prefix="email-sync-bench-") as tmp:
        workdir = Path(tmp)
        # The backend's own capacity, before anything else: latency 0, keep-alive clients in other processes.
        backend = Backend(0.0)
        try:
            capacity = loadgen(backend.port, 64, 2.0 if args.quick else 3.0, min(2, os.cpu_count() or 1))
        finally:
            backend.stop()
        report["backend_capacity"] = capacity
        print(
            f"backend capacity (latency 0, {capacity['connections']} connections, {capacity['procs']} load "
            f"processes): {capacity['rate']:,.0f} req/s",
            flush=True,
        )

        latency0_rate: float | None = None
        for sc in scenarios(args.quick):
            if wanted and sc.name not in wanted:
                continue
            s = run_scenario(sc, args, latency0_rate, capacity["rate"], workdir)
            if sc.name == "c":
                latency0_rate = s["median"]["rate_wall"]
            judge(s, sc, latency0_rate)
            report["scenarios"].append(s)
            out_path.write_text(json.dumps(report, indent=2, default=str))  # partial results survive a crash

        names = {s["name"]: s for s in report["scenarios"]}
        if "d10k" in names and "d100k" in names:
            small, large = names["d10k"]["median"]["peak_rss_mb"], names["d100k"]["median"]["peak_rss_mb"]
            growth = large / small - 1
            verdict = "met" if large <= 100 and abs(growth) <= 0.15 else "MISS"
            report["rss"] = {"n10k_mb": small, "n100k_mb": large, "growth": growth, "verdict": verdict}
            report["notes"].append(
                f"d: peak RSS {small:.1f} MB at N={names['d10k']['users']:,}, {large:.1f} MB at "
                f"N={names['d100k']['users']:,} ({growth:+.0%}); goal <= 100 MB and flat "
                f"+-15%: {verdict}"
            )
        if not wanted or "empty" in wanted:
            print("\n== empty: an `email-sync run` with nobody due, 9 fresh processes ==", flush=True)
            cpu = median([sample[0] for sample in measure(9, 1000)])
            verdict = "met" if cpu <= EMPTY_RUN_CPU_GOAL else "MISS"
            report["empty_run"] = {"median_cpu_s": cpu, "goal_s": EMPTY_RUN_CPU_GOAL, "verdict": verdict}
            report["notes"].append(
                f"empty run (nobody due, start-up included): median {cpu:.3f} s of CPU; goal <= "
                f"{EMPTY_RUN_CPU_GOAL} s: {verdict}"
            )
        if "c" not in names and any(s["latency"] for s in report["scenarios"]):
            report["notes"].append("scenario c was not run: bounds use concurrency/latency only")
        if args.profile:
            print("\n== profile: scenario c under py-spy ==", flush=True)
            report["profile"] = profile(args, workdir, out_path.with_suffix("").parent / f"profile-{stamp}")
    report["seconds"] = time.monotonic() - began
    out_path.write_text(json.dumps(report, indent=2, default=str))
    print_table(report)
    print(f"\nresults: {out_path}  ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.exit(main())
