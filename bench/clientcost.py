"""CPU per request of the HTTP client styles email-sync could use, one thread, keep-alive, against
harness/fast_backend.py at latency 0: requests.Session.post (stream=True, raw.read), urllib3's
HTTPConnectionPool.urlopen, one urllib3 HTTPConnection kept by the caller, http.client, and backend.Session as it is now
(emailsync.sync.http1: the request in one write, the answer parsed from what arrives). The numbers behind leaving
requests, then the pool, then urllib3.

    .venv/bin/python bench/clientcost.py [--requests 3000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from emailsync import __version__  # noqa: E402 -- the repository root is on the path only now
from emailsync.config.settings import BackendConfig  # noqa: E402
from emailsync.sync.backend import Session  # noqa: E402

PAYLOAD = {"user_id": 12345, "email": "user12345@example.com", "max_emails": 50}
NS = uuid.UUID("6b0e1e53-8a0b-4c1a-9a43-53b0f2a54e0c")


def with_requests(port: int, n: int) -> None:
    session = requests.Session()
    session.trust_env = False
    session.verify = "/etc/ssl/certs/ca-certificates.crt"
    session.headers["User-Agent"] = f"email-sync/{__version__}"
    session.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=1, max_retries=0))
    url = f"http://127.0.0.1:{port}/api/v1/sync/start"
    for i in range(n):
        response = session.post(
            url,
            json=PAYLOAD,
            headers={"Idempotency-Key": str(uuid.uuid5(NS, f"r/{i}"))},
            timeout=(5, 30),
            allow_redirects=False,
            stream=True,
        )
        body = response.raw.read(65537, decode_content=True)
        response.close()
        json.loads(body)


def with_urllib3(port: int, n: int) -> None:
    pool = urllib3.HTTPConnectionPool(
        "127.0.0.1",
        port,
        maxsize=1,
        retries=False,
        timeout=urllib3.Timeout(connect=5, read=30),
        headers={"User-Agent": f"email-sync/{__version__}", "Content-Type": "application/json"},
    )
    for i in range(n):
        response = pool.urlopen(
            "POST",
            "/api/v1/sync/start",
            body=json.dumps(PAYLOAD).encode(),
            headers={**pool.headers, "Idempotency-Key": str(uuid.uuid5(NS, f"r/{i}"))},
            redirect=False,
            preload_content=False,
        )
        body = response.read(65537)
        response.release_conn()
        json.loads(body)


def sync_request(i: int) -> dict[str, Any]:
    """The i-th call's request as the connection-level clients send it."""
    return {
        "method": "POST",
        "url": "/api/v1/sync/start",
        "body": json.dumps(PAYLOAD).encode(),
        "headers": {
            "User-Agent": f"email-sync/{__version__}",
            "Content-Type": "application/json",
            "Idempotency-Key": str(uuid.uuid5(NS, f"r/{i}")),
        },
    }


def with_urllib3_connection(port: int, n: int) -> None:
    connection = urllib3.connection.HTTPConnection("127.0.0.1", port, timeout=30)
    for i in range(n):
        if connection.sock is not None and not connection.is_connected:
            connection.close()
        connection.request(**sync_request(i), preload_content=False)
        json.loads(connection.getresponse().read(65537))


def with_http_client(port: int, n: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for i in range(n):
        connection.request(**sync_request(i))
        json.loads(connection.getresponse().read(65537))


def with_emailsync(port: int, n: int) -> None:
    with Session(BackendConfig(base_url=f"http://127.0.0.1:{port}"), str(uuid.uuid4())) as session:
        for i in range(n):
            json.loads(session.call(**sync_request(i)).body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    n = max(100, min(args.requests, 100_000))
    backend = subprocess.Popen(
        [sys.executable, "-m", "harness.fast_backend", "--max-seconds", "300"],
        cwd=HERE.parent,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = int(backend.stdout.readline())  # type: ignore[union-attr]
        for name, fn in (
            ("requests.Session.post", with_requests),
            ("urllib3 urlopen", with_urllib3),
            ("urllib3 HTTPConnection", with_urllib3_connection),
            ("http.client", with_http_client),
            ("emailsync backend.Session (http1)", with_emailsync),
        ):
            fn(port, 200)  # warm up
            cpu0, wall0 = time.process_time(), time.perf_counter()
            fn(port, n)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            print(
                json.dumps(
                    {
                        "client": name,
                        "requests": n,
                        "cpu_us_per_request": round(1e6 * cpu / n),
                        "wall_us_per_request": round(1e6 * wall / n),
                    }
                )
            )
    finally:
        backend.terminate()
        backend.wait(10)


if __name__ == "__main__":
    main()
