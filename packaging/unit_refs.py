#!/usr/bin/env python3
"""Every email-sync unit that a shipped unit names (OnFailure=, Wants=, Requires=, ...) must be in the package too:
a unit naming one the package lacks fails only at run time, and quietly ("Failed to enqueue OnFailure= job").

    packaging/unit_refs.py DEB...      # exit 1 and name what is missing

Units of other packages (network-online.target, postgresql.service) are not checked here: whether the release's
systemd knows them is proven in a booted container of that release (tests/installed).
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
import tarfile
from collections.abc import Mapping
from pathlib import PurePosixPath

UNIT_DIRS = ("usr/lib/systemd/system", "lib/systemd/system")
DEPENDENCIES = ("OnFailure", "OnSuccess", "Wants", "Requires", "Requisite", "BindsTo", "Upholds", "PartOf", "Unit")
OURS = "email-sync"


def references(name: str, text: str) -> set[str]:
    """The units that unit ``name`` (its file ``text``) names in its dependency settings, as unit file names:
    %n/%N/%p/%i resolved, an instance (foo@bar.service) mapped to the template file that provides it."""
    prefix, _, rest = name.partition("@")
    instance = rest.rsplit(".", 1)[0] if rest else ""
    specifiers = {"%n": name, "%N": name.rsplit(".", 1)[0], "%p": prefix.rsplit(".", 1)[0], "%i": instance}
    found: set[str] = set()
    for key, value in re.findall(r"^\s*(\w+)\s*=(.*)$", text, re.M):
        if key not in DEPENDENCIES:
            continue
        for word in value.split():
            for spec, replacement in specifiers.items():
                word = word.replace(spec, replacement)
            template = re.sub(r"@.*\.([a-z]+)$", r"@.\1", word)
            found.add(template)
    return found


def missing(units: Mapping[str, str]) -> dict[str, set[str]]:
    """{unit: the email-sync units it names that are not among ``units``} for every unit of ``units``
    ({file name: text}) that names one."""
    gaps = {
        name: {ref for ref in references(name, text) if ref.startswith(OURS) and ref not in units}
        for name, text in units.items()
    }
    return {name: refs for name, refs in gaps.items() if refs}


def deb_units(deb: str) -> dict[str, str]:
    """{file name: text} of the systemd units in a .deb."""
    data = subprocess.run(["dpkg-deb", "--fsys-tarfile", deb], check=True, capture_output=True).stdout
    units: dict[str, str] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        for member in archive.getmembers():
            path = PurePosixPath(member.name.removeprefix("./"))
            if member.isfile() and str(path.parent) in UNIT_DIRS:
                extracted = archive.extractfile(member)
                assert extracted is not None
                units[path.name] = extracted.read().decode()
    return units


def main(debs: list[str]) -> int:
    failed = False
    for deb in debs:
        units = deb_units(deb)
        if not units:
            print(f"{deb}: no systemd units at all", file=sys.stderr)
            failed = True
        for unit, refs in sorted(missing(units).items()):
            print(f"{deb}: {unit} names {', '.join(sorted(refs))}, which the package does not ship", file=sys.stderr)
            failed = True
        if not failed:
            print(f"{deb}: every email-sync unit named by {', '.join(sorted(units))} is shipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
