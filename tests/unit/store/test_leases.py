"""Leases on users: how long a failed user waits before it is due again."""

from __future__ import annotations

import pytest

from emailsync.config.settings import SyncConfig
from emailsync.store.leases import failure_backoff

SYNC = SyncConfig(3600, 100, 50, 10, 600, 5, "host", 300, 86400, 20, 3)


@pytest.mark.parametrize(("failures", "ceiling"), [(0, 300), (1, 600), (3, 2400), (9, 86400), (500, 86400)])
def test_failure_backoff_doubles_up_to_its_cap_with_jitter_below_the_ceiling(failures: int, ceiling: float) -> None:
    waits = [failure_backoff(SYNC, failures) for _ in range(200)]

    assert all(ceiling / 2 <= wait <= ceiling for wait in waits)
    assert max(waits) - min(waits) > 0
