"""Durations read exactly as systemd reads them: `systemd-analyze timespan` on this machine is the oracle."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from emailsync.systemd import timespan
from tests.unit.config.test_settings_property import bounded

SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
_USEC_LINE = re.compile(r"^\s*μs: (\S+)$", re.MULTILINE)


def systemd(spans: list[str]) -> list[int | None]:
    """What systemd makes of each span: microseconds, or None when it refuses it (infinity counts as refused:
    no duration of ours may be endless). One systemd-analyze call answers spans until the first it refuses."""
    answers: list[int | None] = []
    while len(answers) < len(spans):
        rest = spans[len(answers) :]
        result = subprocess.run(
            [SYSTEMD_ANALYZE, "timespan", "--", *rest], capture_output=True, text=True, timeout=30, check=False
        )
        values = _USEC_LINE.findall(result.stdout)
        answers += [None if value == "infinity" or int(value) >= 2**64 - 1 else int(value) for value in values]
        if result.returncode != 0:
            assert "Failed to parse" in result.stderr, result.stderr
            answers.append(None)
    return answers


def ours(span: str) -> int | None:
    try:
        return timespan.parse(span)
    except ValueError:
        return None


spaces = st.text(alphabet=" \t", max_size=2)
numbers = st.one_of(
    st.from_regex(r"\A\+?[0-9]{1,4}(\.[0-9]{0,4})?\Z"),
    st.from_regex(r"\A\.[0-9]{1,3}\Z"),
    st.integers(0, 2**65).map(str),
)
units = st.sampled_from([*timespan.UNITS, "", "", "S", "mins", "ns", "hrs", "Min", "e3", "."])
parts = st.tuples(numbers, spaces, units, spaces).map("".join)
valid_looking = st.lists(parts, min_size=1, max_size=4).map("".join)
anything = st.text(alphabet="0123456789 .+-smhdwyMuμµnorecinaty\t", max_size=12)


@given(spans=st.lists(st.one_of(valid_looking, anything), min_size=1, max_size=25))
@bounded(60)
@example(spans=["5min", "30sec", "1w", "2h 30min", "1h30m", "1.5h", "90", "1y", "1M", "250ms", "3μs", "5 minutes"])
@example(spans=["", "5x", "5.s", "-5s", "infinity", "1e3", "5S", "5mins", "9223372036854775808us"])
def test_a_span_means_what_systemd_analyze_says_it_means(spans: list[str]) -> None:
    assert [ours(span) for span in spans] == systemd(spans)


@pytest.mark.parametrize(("span", "usec"), [("2h 30min", 9_000_000_000), ("1.5h", 5_400_000_000), ("90", 90_000_000)])
def test_the_oracle_itself_answers(span: str, usec: int) -> None:
    """The property above is only as good as its oracle: systemd-analyze must be there and answer."""
    assert systemd([span]) == [usec]
