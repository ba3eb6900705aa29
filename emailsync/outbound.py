"""HTTP requests to the operator's own endpoints: the alert webhook and the monitoring pings.

Unlike the backend calls, they go through the environment's proxy when it names one for their URL (http_proxy,
https_proxy, no_proxy), as curl does: such endpoints often have to be reached through one. No redirects, no
retries of urllib3's own: the callers decide what a failure means.

urllib3 is imported by the first request, not before: most runs send none (no alert, no ping URL), and its import
(with http.client and urllib.request) is about 20 ms of CPU that a run finding nobody due need not spend.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import urllib3


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
    """The answer's status, within the timeouts (seconds; None: unbounded); Unreachable when there is none."""
    import urllib3

    try:
        response = _pool_for(url).request(
            method,
            url,
            body=body,
            headers=dict(headers),
            timeout=urllib3.Timeout(connect=connect, read=read, total=total),
            retries=False,
            redirect=False,
        )
    except urllib3.exceptions.HTTPError as failure:
        raise Unreachable(type(failure).__name__) from None
    return int(response.status)


def _pool_for(url: str) -> urllib3.PoolManager:
    import urllib.request

    import urllib3

    parts = urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        return urllib3.ProxyManager(proxy)
    return urllib3.PoolManager()
