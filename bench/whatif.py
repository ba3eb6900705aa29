"""What-if runs for the benchmark report: `email-sync` with one or more candidate changes monkeypatched in, so
their effect can be measured before anyone edits emailsync/. Not shipped; not a fix. Each patch is small and
guarded: if emailsync's code has moved on and a patch no longer applies, this exits 2 naming it.

    .venv/bin/python bench/bench.py --only c --repeats 1 --whatif feed,noping

Patches:
  feed    claim again while fewer than 2*concurrency + batch_size claims are unfinished (today: 2*concurrency), so
          the call threads' queue never runs dry while the main thread is busy with a DB round trip
  noping  no pool_pre_ping (a short-lived process on a fresh connection; with_retry already retries once on a
          dropped connection): one round trip fewer per transaction
  urllib3 the call threads use urllib3's HTTPConnectionPool directly instead of requests.Session (a shim)
"""

from __future__ import annotations

import sys


def patch_feed() -> None:
    from emailsync import cycle

    original = cycle.Cycle._claim_more

    def _claim_more(self, pool):  # type: ignore[no-untyped-def]
        watermark = 2 * self.config.backend.concurrency + self.config.sync.batch_size
        if len(self.in_flight) >= watermark:
            return
        saved = self.config.backend.concurrency
        try:
            # reuse the original body with its own (lower) check neutralised: in_flight < 2*conc always holds here
            # when conc is scaled up for the call
            object.__setattr__(self.config.backend, "concurrency", watermark)
            return original(self, pool)
        finally:
            object.__setattr__(self.config.backend, "concurrency", saved)

    cycle.Cycle._claim_more = _claim_more  # type: ignore[method-assign]


def patch_noping() -> None:
    from emailsync import db

    real = db.create_engine

    def create_engine(*args, **kwargs):  # type: ignore[no-untyped-def]
        kwargs["pool_pre_ping"] = False
        return real(*args, **kwargs)

    db.create_engine = create_engine  # type: ignore[assignment]


def patch_urllib3() -> None:
    """The call threads' requests.Session replaced by a thin shim over one urllib3 HTTPConnectionPool (same
    headers, timeouts, no redirects, no retries, streamed body). What-if only: urllib3's exceptions are not mapped
    to requests' (the benchmark's backend never fails)."""
    import json as jsonlib
    from urllib.parse import urlsplit

    import urllib3

    from emailsync import backend

    class Response:
        def __init__(self, raw: urllib3.BaseHTTPResponse) -> None:
            self.raw = raw
            self.status_code = raw.status
            self.headers = raw.headers

        def close(self) -> None:
            self.raw.release_conn()

    class Session:
        def __init__(self, config):  # type: ignore[no-untyped-def]
            parts = urlsplit(config.base_url)
            self.headers = {"User-Agent": "email-sync", "Accept": "*/*"}
            if config.token:
                self.headers["Authorization"] = f"Bearer {config.token}"
            if parts.scheme == "https":
                self.pool = urllib3.HTTPSConnectionPool(
                    parts.hostname,
                    parts.port,
                    maxsize=1,
                    retries=False,
                    ca_certs=config.ca_file or backend.SYSTEM_CA_BUNDLE,
                )
            else:
                self.pool = urllib3.HTTPConnectionPool(parts.hostname, parts.port, maxsize=1, retries=False)
            self.prefix = f"{parts.scheme}://{parts.netloc}"

        def _open(self, method, url, body, headers, timeout):  # type: ignore[no-untyped-def]
            return Response(
                self.pool.urlopen(
                    method,
                    url[len(self.prefix) :],
                    body=body,
                    headers={**self.headers, **headers},
                    timeout=urllib3.Timeout(connect=timeout[0], read=timeout[1]),
                    redirect=False,
                    preload_content=False,
                    retries=False,
                )
            )

        def post(self, url, json, headers, timeout, allow_redirects, stream):  # type: ignore[no-untyped-def]
            return self._open(
                "POST", url, jsonlib.dumps(json).encode(), {"Content-Type": "application/json", **headers}, timeout
            )

        def get(self, url, timeout, allow_redirects):  # type: ignore[no-untyped-def]
            return self._open("GET", url, None, {}, timeout)

        def __enter__(self):  # type: ignore[no-untyped-def]
            return self

        def __exit__(self, *_):  # type: ignore[no-untyped-def]
            self.pool.close()

    backend.new_session = Session  # type: ignore[assignment]


PATCHES = {"feed": patch_feed, "noping": patch_noping, "urllib3": patch_urllib3}


def main() -> None:
    if len(sys.argv) < 3 or sys.argv[1] != "--patches":
        raise SystemExit("usage: whatif.py --patches a,b -- EMAIL-SYNC-ARGS...")
    names = [n for n in sys.argv[2].split(",") if n]
    rest = sys.argv[3:]
    if rest[:1] == ["--"]:
        rest = rest[1:]
    for name in names:
        if name not in PATCHES:
            raise SystemExit(f"unknown patch {name!r}; known: {', '.join(PATCHES)}")
        try:
            PATCHES[name]()
        except (AttributeError, ImportError) as error:
            print(f"whatif: patch {name} no longer applies: {error}", file=sys.stderr)
            sys.exit(2)
    from emailsync import cli

    sys.exit(cli.main(rest))


if __name__ == "__main__":
    main()
