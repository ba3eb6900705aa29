"""Summarize a `py-spy record --format raw` file: samples by thread, self time by function, inclusive time by
function and by named areas of email-sync (HTTP call, DB, logging, the main loop's waits).

    .venv/bin/python bench/profile_summary.py bench/results/profile-*/pyspy-gil.txt
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

# Areas: a sample belongs to an area when any frame of its stack contains the marker (so areas may overlap).
AREAS = {
    "HTTP call (Client._attempt)": "_attempt (emailsync/sync/backend.py",
    "  requests Session.request/prepare (excl. send)": "prepare_request (requests/sessions.py",
    "  requests adapter send (urllib3 + http.client)": "send (requests/adapters.py",
    "  http.client response parsing": "begin (http/client.py",
    "  socket send/recv": "sock",
    "  idempotency_key (uuid5)": "idempotency_key (emailsync/sync/backend.py",
    "main thread loop (_call_until_done)": "_call_until_done (emailsync/sync/cycle.py",
    "  waiting for outcomes (next_outcome)": "next_outcome (emailsync/sync/backend.py",
    "  claims (Leases.claim)": "claim (emailsync/store/leases.py",
    "  result writes (Leases.record)": "record (emailsync/store/leases.py",
    "  accounting + logging (_account)": "_account (emailsync/sync/cycle.py",
    "  watchdog/status (notifier.progress)": "progress (emailsync/systemd/notify.py",
    "structlog (any thread)": "structlog",
    "SQLAlchemy (any thread)": "sqlalchemy/",
    "psycopg2 execute (any thread)": "execute (psycopg2",
    "call threads (CallPool._work, all)": "_work (emailsync/sync/backend.py",
    "  of which requests' own code (Session.request minus urllib3 urlopen): see inclusive": "Session.request (",
    "  urllib3 urlopen": "urlopen (urllib3/connectionpool.py",
    "  typing Protocol isinstance checks (_ProtocolMeta)": "_ProtocolMeta.__instancecheck__",
    "startup: imports": "_find_and_load",
    "startup: preflight (check_ready)": "check_ready (emailsync/store/db.py",
    "startup: count_due": "count_due (emailsync/store/leases.py",
}


def parse(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def function_of(frame: str) -> str:
    return re.sub(r":\d+\)$", ")", frame)


def summarize_raw(path: Path, top: int = 20) -> dict[str, Any]:
    stacks = parse(path)
    total = sum(c for _, c in stacks) or 1
    threads: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    for frames, count in stacks:
        body = [f for f in frames if not f.startswith(("thread", "process"))]
        name = "call threads" if any("_work (emailsync/sync/backend.py" in f for f in body) else "main thread"
        threads[name] += count
        if body:
            self_time[function_of(body[-1])] += count
        for fn in {function_of(f) for f in body}:
            inclusive[fn] += count
        joined = ";".join(body)
        for area, marker in AREAS.items():
            if marker in joined:
                areas[area] += count
    pct = lambda c: round(100 * c / total, 1)  # noqa: E731
    return {
        "samples": total,
        "threads_pct": {k: pct(v) for k, v in threads.most_common()},
        "areas_pct": {k: pct(areas[k]) for k in AREAS},
        "self_pct": [(k, pct(v)) for k, v in self_time.most_common(top)],
        "inclusive_pct": [(k, pct(v)) for k, v in inclusive.most_common(top * 2)],
    }


def main() -> None:
    for name in sys.argv[1:]:
        s = summarize_raw(Path(name), top=25)
        print(f"== {name}: {s['samples']} samples")
        print("threads:", s["threads_pct"])
        print("-- areas (% of samples whose stack contains it)")
        for k, v in s["areas_pct"].items():
            print(f"  {v:5.1f}%  {k}")
        print("-- self")
        for k, v in s["self_pct"]:
            print(f"  {v:5.1f}%  {k}")
        print("-- inclusive")
        for k, v in s["inclusive_pct"]:
            print(f"  {v:5.1f}%  {k}")


if __name__ == "__main__":
    main()
