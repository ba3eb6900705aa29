"""Secrets out of what we show: each spelling an echo can give a secret is redacted, and a URL's password whole."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from emailsync import redaction
from emailsync.systemd import logs
from harness.backend import ECHOES
from tests.unit.config.test_settings_property import bounded

SECRET = 'tok-S3cr3t/+=Zq9 é"\\x'  # a slash, a plus, an equals sign, a space, non-ASCII, a quote, a backslash


def leaks(text: str, secret: str) -> list[str]:
    """The spellings of ``secret`` that ``text`` still holds whole, or (but for base64's) any MIN_PARTIAL
    characters of."""
    found = []
    for name, echo in ECHOES.items():
        spelled = echo(secret)
        pieces = [spelled] if "base64" in name or name == "basic" else windows(spelled)
        found += [name] if any(piece in text for piece in pieces) else []
    return found


def windows(text: str) -> list[str]:
    return [text[i : i + redaction.MIN_PARTIAL] for i in range(max(1, len(text) - redaction.MIN_PARTIAL + 1))]


@pytest.mark.parametrize("spelling", ECHOES)
def test_a_secret_is_redacted_in_each_spelling_an_echo_can_take(spelling: str) -> None:
    logs.configure(secrets=[SECRET])

    shown = redaction.redact(f"HTTP 400: token {ECHOES[spelling](SECRET)} rejected")

    assert leaks(shown, SECRET) == [] and "***" in shown


@bounded(200)
@given(
    secret=st.text(st.characters(codec="utf-8", exclude_categories=["Cc", "Cs"]), min_size=redaction.MIN_PARTIAL),
    spelling=st.sampled_from(list(ECHOES)),
    before=st.text(max_size=5),
    after=st.text(max_size=5),
)
def test_no_spelling_of_any_secret_survives_redaction(secret: str, spelling: str, before: str, after: str) -> None:
    logs.configure(secrets=[secret])

    assert leaks(redaction.redact(before + ECHOES[spelling](secret) + after), secret) == []


def test_a_prefix_shorter_than_min_partial_is_left_as_is() -> None:
    """The documented limit: a few leading characters of a secret are too common in ordinary text to redact."""
    logs.configure(secrets=[SECRET])

    short = SECRET[: redaction.MIN_PARTIAL - 1]
    assert redaction.redact(f"token {short}") == f"token {short}"


def test_a_secret_our_own_cut_goes_through_is_redacted_up_to_the_cut() -> None:
    logs.configure(secrets=[SECRET])

    shown = redaction.redact_and_truncate("x" * 90 + SECRET + "y" * 1000, 100)

    assert shown.startswith("x" * 90 + "***") and SECRET[: redaction.MIN_PARTIAL] not in shown


def test_a_url_password_with_an_unencoded_at_sign_is_redacted_whole() -> None:
    logs.configure()

    assert (
        redaction.redact("bad port in postgresql://app:p@ss:w0rd@db:5432/app")
        == "bad port in postgresql://app:***@db:5432/app"
    )
