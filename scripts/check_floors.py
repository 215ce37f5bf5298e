"""Checks that scripts/oldest.txt pins every floor pyproject.toml declares, at the floor.

    python scripts/check_floors.py        # from anywhere; exits 1 and says what differs

The oldest-versions job of scripts/test.sh installs scripts/oldest.txt and runs the
tests there, so the floors are tested only while each `name>=X` of the dependencies
and of the extras that job installs is pinned `name==X`. pip would refuse a pin below
a floor; this catches the other way round, a floor raised or a pin moved up without
the other, which would leave the declared floor untested. Pins of packages keras-bn
does not declare (jaxlib, keras-hub's own dependencies) are allowed: oldest.txt says
why each is there.
"""

import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The extras the oldest-versions job installs: the backends and the tests.
EXTRAS = ("tensorflow", "jax", "torch", "test")
_FLOOR = re.compile(r"^\s*([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*>=\s*([0-9][^,;\s]*)\s*$")
_PIN = re.compile(r"^\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s#]+)")


def _name(name):
    """Returns a package name as pip compares it (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_floors(pyproject):
    """Returns `{name: floor}` for the dependencies and the job's extras of `pyproject`."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    requirements = list(project["dependencies"])
    for extra in EXTRAS:
        requirements += project["optional-dependencies"][extra]
    floors = {}
    for requirement in requirements:
        match = _FLOOR.match(requirement)
        if match is None:
            raise SystemExit(f"check_floors: {pyproject.name} declares {requirement!r}, not `name>=X`: "
                             "give it a floor the oldest-versions job can pin")
        floors[_name(match[1])] = match[3]
    return floors


def pins(oldest):
    """Returns `{name: version}` of the `name==version` lines of `oldest`."""
    found = {}
    for line in oldest.read_text(encoding="utf-8").splitlines():
        match = _PIN.match(line)
        if match:
            found[_name(match[1])] = match[2]
    return found


def _release(version):
    """Returns a version's release numbers without trailing zeros: 3.10 and 3.10.0 are one."""
    numbers = [int(part) for part in version.split(".")]
    while numbers and numbers[-1] == 0:
        numbers.pop()
    return tuple(numbers)


def main():
    """Compares the floors with the pins; prints each difference and exits 1 on any."""
    floors = declared_floors(ROOT / "pyproject.toml")
    pinned = pins(ROOT / "scripts" / "oldest.txt")
    problems = [f"{name}>={floor} is declared but oldest.txt pins {name}=={pinned[name]}"
                for name, floor in floors.items() if name in pinned and _release(pinned[name]) != _release(floor)]
    problems += [f"{name}>={floor} is declared but oldest.txt does not pin it"
                 for name, floor in floors.items() if name not in pinned]
    for problem in problems:
        print(f"check_floors: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"check_floors: the {len(floors)} floors of pyproject.toml are pinned in scripts/oldest.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
