"""HTTP requests to the operator's own endpoints: the alert webhook and the monitoring pings.

Unlike the backend calls, they go through the environment's proxy when it names one for their URL (http_proxy,
https_proxy, no_proxy), as curl does: such endpoints often have to be reached through one. No redirects, no
retries of urllib3's own: the callers decide what a failure means.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Mapping
from urllib.parse import urlsplit

import urllib3


def request(method: str, url: str, body: bytes | None, headers: Mapping[str, str], timeout: urllib3.Timeout) -> int:
    """The answer's status; urllib3.exceptions.HTTPError when there is none."""
    response = _pool_for(url).request(
        method, url, body=body, headers=dict(headers), timeout=timeout, retries=False, redirect=False
    )
    return int(response.status)


def _pool_for(url: str) -> urllib3.PoolManager:
    parts = urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        return urllib3.ProxyManager(proxy)
    return urllib3.PoolManager()
