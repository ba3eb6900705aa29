"""Every email-sync unit a shipped unit names (OnFailure=, Wants=, Requires=, ...) is in the package's install list:
the failure alert only works from the package if its template unit is shipped next to the service."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from tests import scripts

ROOT = Path(__file__).resolve().parents[2]


def unit_refs() -> ModuleType:
    return scripts.load("unit_refs.py")


def shipped_units() -> dict[str, str]:
    """{file name: text} of the units debian/email-sync.install puts under /usr/lib/systemd/system."""
    units = {}
    for line in (ROOT / "debian" / "email-sync.install").read_text().splitlines():
        source, _, destination = line.partition(" ")
        if destination.strip().rstrip("/") == "usr/lib/systemd/system":
            units[Path(source).name] = (ROOT / source).read_text()
    return units


def test_the_package_ships_every_email_sync_unit_its_units_name() -> None:
    units = shipped_units()
    assert {"email-sync.service", "email-sync.timer", "email-sync-alert@.service"} <= set(units)
    assert unit_refs().missing(units) == {}


def test_without_the_alert_template_the_service_is_reported() -> None:
    units = shipped_units()
    del units["email-sync-alert@.service"]
    assert unit_refs().missing(units) == {"email-sync.service": {"email-sync-alert@.service"}}


def test_specifiers_and_instances_resolve_to_the_template_file() -> None:
    text = "[Unit]\nOnFailure=email-sync-alert@%n.service\nWants=network-online.target\nRequires=%p-helper.socket\n"
    assert unit_refs().references("email-sync.service", text) == {
        "email-sync-alert@.service",
        "network-online.target",
        "email-sync-helper.socket",
    }
