"""HTTP requests to the operator's own endpoints: the alert webhook and the monitoring pings, sent with requests.

Unlike the backend calls, they go through the environment's proxy when it names one for their URL (http_proxy,
https_proxy, no_proxy), as curl does: such endpoints often have to be reached through one. requests does that from
the environment (trust_env). No redirects and no retries of its own: the callers decide what a failure means. Only
the answer's status is read, never its body: a body that trickles in for ever, each byte within the read timeout,
would otherwise hold the run.
Certificates are checked against the system's trusted CAs (Debian's ca-certificates, SSL_CERT_FILE), as curl does,
not against the certifi bundle requests would pick.

requests is imported by the first request, not before: most runs send none (no alert, no ping URL), and its import
is CPU that a run finding nobody due need not spend.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping


class Unreachable(Exception):
    """The request got no answer; the text is the kind of failure only, as a URL it could quote may hold a key."""


def request(
    method: str,
    url: str,
    body: bytes | None,
    headers: Mapping[str, str],
    *,
    connect: float | None = None,
    read: float | None = None,
    total: float | None = None,
) -> int:
    """The answer's status, within the timeouts (seconds; None: unbounded); Unreachable when there is none.

    ``total`` bounds the connect and the wait for the answer alike, where ``connect`` or ``read`` is not given.
    """
    import requests

    with requests.Session() as session:
        session.headers.clear()  # only the caller's headers, as before: no requests defaults
        try:
            response = session.request(
                method,
                url,
                data=body,
                headers=dict(headers),
                timeout=(_bound(connect, total), _bound(read, total)),
                allow_redirects=False,
                verify=_system_trust(),
                stream=True,  # the status and headers only: the body is left unread
            )
        except requests.RequestException as failure:
            raise Unreachable(type(failure).__name__) from None
        response.close()
        return response.status_code


def _bound(phase: float | None, total: float | None) -> float | None:
    if phase is None:
        return total
    return phase if total is None else min(phase, total)


def _system_trust() -> str | bool:
    """The system's CA bundle (or directory) OpenSSL would use, SSL_CERT_FILE and SSL_CERT_DIR included."""
    paths = ssl.get_default_verify_paths()
    return paths.cafile or paths.capath or True
