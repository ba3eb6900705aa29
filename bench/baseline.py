"""The BASELINE: the original service's loop, re-implemented faithfully for comparison (not email-sync code).

What the old ``nohup python3`` loop did in one pass: query the due users (last_sync NULL or older than an hour),
then for each one, sequentially: POST {"user_id", "email", "max_emails"} to the sync endpoint with one
requests.Session, and on a 2xx ``UPDATE users SET last_sync = now() WHERE id = ...`` with a commit per user.
``--limit`` caps the users taken (a sample: at 50 ms per call, 10,000 users would take 8+ minutes); the rate of a
sequential loop does not depend on how many users it walks through, so bench.py scales it.

Prints one JSON line: users, synced, seconds (the loop only), rate.
"""

from __future__ import annotations

import argparse
import json
import time

import psycopg2
import requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--url", required=True, help="the sync endpoint")
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--max-emails", type=int, default=50)
    parser.add_argument("--max-seconds", type=float, default=600, help="stop early after this long")
    args = parser.parse_args()

    started = time.monotonic()
    connection = psycopg2.connect(args.dsn, application_name="email-sync-baseline")
    session = requests.Session()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT id, email FROM users WHERE last_sync IS NULL OR last_sync < now() - interval '1 hour' LIMIT %s",
            (args.limit,),
        )
        due = cursor.fetchall()
    connection.commit()
    synced = 0
    for user_id, email in due:
        if time.monotonic() - started > args.max_seconds:
            break
        response = session.post(
            args.url, json={"user_id": user_id, "email": email, "max_emails": args.max_emails}, timeout=30
        )
        if 200 <= response.status_code < 300:
            with connection.cursor() as cursor:
                cursor.execute("UPDATE users SET last_sync = now() WHERE id = %s", (user_id,))
            connection.commit()
            synced += 1
    seconds = time.monotonic() - started
    connection.close()
    print(json.dumps({"users": len(due), "synced": synced, "seconds": seconds, "rate": synced / seconds}))


if __name__ == "__main__":
    main()
