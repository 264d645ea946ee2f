"""`python -m benchmarks.install_wheels FOLDER [--target DIR]`: installs the carried wheels that this Python lacks.

The GPU machine has a CUDA PyTorch and an older transformers, no TRL or datasets, and no package index. The wheels
that `benchmarks/fetch_wheels.sh` downloads travel with the repository, and this installs, with pip's `--no-index
--no-deps`, only those whose package is missing here or does not satisfy what is required of it: by the project
(`pyproject.toml`'s dependencies) and by the carried wheels themselves (datasets' bounds on dill and fsspec, ...).
Everything already good enough, PyTorch above all, stays as it is. Requirements that stay unmet (a package neither
installed well enough nor carried) are listed, so that a failure to import later has its cause on the page.

With `--target DIR` the wheels go to DIR, which must come first on `PYTHONPATH` (`benchmarks/gpu.sh` does both), so
that a newer transformers there shadows the preinstalled one.
"""

import argparse
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from email.parser import HeaderParser
from importlib import metadata
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pip's own copy of tomli
    from pip._vendor import tomli as tomllib
try:
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.tags import sys_tags
    from packaging.utils import canonicalize_name, parse_wheel_filename
    from packaging.version import Version
except ImportError:  # a bare environment: pip always carries its own copy
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.specifiers import SpecifierSet
    from pip._vendor.packaging.tags import sys_tags
    from pip._vendor.packaging.utils import canonicalize_name, parse_wheel_filename
    from pip._vendor.packaging.version import Version

PYPROJECT = Path(__file__).parents[1] / "pyproject.toml"


@dataclass
class Wheel:
    """One carried wheel: its file, package and version, and what it requires (extras and other platforms left out)."""

    path: Path
    name: str
    version: Version
    requires: list[Requirement] = field(default_factory=list)


def read_wheel(path: Path) -> Wheel:
    """The wheel at `path`; a `ValueError` if this Python cannot install it (another Python version or platform)."""
    name, version, _, tags = parse_wheel_filename(path.name)
    if not tags & set(sys_tags()):
        raise ValueError(
            f"{path.name} is for {sorted(str(tag) for tag in tags)}, which this Python ({sys.version.split()[0]}, "
            f"{sys.platform}) cannot install: fetch it for this Python (benchmarks/fetch_wheels.sh)."
        )
    with zipfile.ZipFile(path) as archive:
        metadata_name = next(item for item in archive.namelist() if item.endswith(".dist-info/METADATA"))
        headers = HeaderParser().parsestr(archive.read(metadata_name).decode())
    requires = [Requirement(line) for line in headers.get_all("Requires-Dist") or []]
    requires = [req for req in requires if req.marker is None or req.marker.evaluate({"extra": ""})]
    return Wheel(path, canonicalize_name(name), version, requires)


def read_wheels(folder: Path) -> list[Wheel]:
    """Every wheel in `folder`; two versions of one package are refused (pip would stop the whole install)."""
    wheels = [read_wheel(path) for path in sorted(folder.glob("*.whl"))]
    seen: dict[str, Wheel] = {}
    for wheel in wheels:
        if wheel.name in seen:
            raise ValueError(
                f"{folder} holds two versions of {wheel.name}: {seen[wheel.name].path.name} and {wheel.path.name}. "
                "Delete one."
            )
        seen[wheel.name] = wheel
    return wheels


def project_requirements(pyproject: Path = PYPROJECT) -> list[Requirement]:
    """The project's own dependencies, from `pyproject.toml`."""
    return [Requirement(line) for line in tomllib.loads(pyproject.read_text())["project"]["dependencies"]]


def wanted(wheels: list[Wheel], project: list[Requirement]) -> dict[str, SpecifierSet]:
    """Every package's required versions: the project's bounds and the carried wheels', intersected."""
    bounds: dict[str, SpecifierSet] = {}
    for requirement in [*project, *(req for wheel in wheels for req in wheel.requires)]:
        name = canonicalize_name(requirement.name)
        bounds[name] = bounds.get(name, SpecifierSet()) & requirement.specifier
    return bounds


def satisfied(version: str | None, specifier: SpecifierSet | None) -> bool:
    return version is not None and (specifier is None or specifier.contains(version, prereleases=True))


def select(wheels: list[Wheel], bounds: dict[str, SpecifierSet], installed: dict[str, str | None]) -> list[Wheel]:
    """The wheels to install: those whose package is missing from `installed` or outside its `bounds`.

    A carried wheel that is itself outside the bounds is refused: installing it would not help.
    """
    chosen = []
    for wheel in wheels:
        specifier = bounds.get(wheel.name)
        if satisfied(installed.get(wheel.name), specifier):
            continue
        if specifier is not None and not specifier.contains(wheel.version, prereleases=True):
            raise ValueError(
                f"{wheel.path.name} does not satisfy {wheel.name}{specifier}, which is required here: fetch a version "
                "that does (benchmarks/fetch_wheels.sh)."
            )
        chosen.append(wheel)
    return chosen


def unmet(bounds: dict[str, SpecifierSet], installed: dict[str, str | None]) -> list[str]:
    """The requirements that the installed packages do not satisfy, as `name>=x (found y)`."""
    return [
        f"{name}{specifier or ''} (found {installed.get(name) or 'none'})"
        for name, specifier in bounds.items()
        if not satisfied(installed.get(name), specifier)
    ]


def installed_versions(names) -> dict[str, str | None]:
    """The version of each package that this Python imports (the first on `sys.path`), or `None`."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def install(wheels: list[Wheel], folder: Path, target: Path | None) -> None:
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile"]
    command += ["--no-cache-dir", "--disable-pip-version-check", "--find-links", str(folder), "--upgrade"]
    command += ["--target", str(target)] if target is not None else []
    subprocess.run([*command, *(str(wheel.path) for wheel in wheels)], check=True)


def main(argv: list[str] | None = None) -> list[Wheel]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="the carried wheels (benchmarks/wheels)")
    parser.add_argument("--target", type=Path, help="install there (put it first on PYTHONPATH), not into this Python")
    parser.add_argument("--dry-run", action="store_true", help="say what would be installed, install nothing")
    args = parser.parse_args(argv)
    wheels = read_wheels(args.folder)
    bounds = wanted(wheels, project_requirements())
    before = installed_versions(sorted({*bounds, *(wheel.name for wheel in wheels)}))
    chosen = select(wheels, bounds, before)
    for wheel in wheels:
        action = "install" if wheel in chosen else "keep the installed one"
        found = before.get(wheel.name) or "none"
        print(f"[wheels] {wheel.name}: found {found}, wanted {bounds.get(wheel.name) or 'any'}, carried "
              f"{wheel.version}: {action}")  # fmt: skip
    if chosen and not args.dry_run:
        install(chosen, args.folder, args.target)
        if args.target is not None and str(args.target) not in sys.path:
            sys.path.insert(0, str(args.target))  # so that the check below sees what was installed
    after = installed_versions(bounds) if not args.dry_run else before
    for requirement in unmet(bounds, after):
        print(f"[wheels] unmet, not carried: {requirement}")
    return chosen


if __name__ == "__main__":
    main()
