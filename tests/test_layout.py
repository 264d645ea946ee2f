"""The packages' imports point one way: model <- cards <- data <- training, evaluation, serving <- command line; and
no package grows into the place where everything else goes."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
SHIPPED = ("modeling_llava", "processing", "hub_cards", "trainers", "evaluation", "serving", "command_line")
PROJECT = {*SHIPPED, "benchmarks", "tests"}
# What each package may import of the project besides itself.
ALLOWED = {
    "modeling_llava": set(),
    # hub_cards.model_card, torch-free, names the files of a saved folder (an adapter's llava_base.json).
    "processing": {"modeling_llava", "hub_cards"},
    "hub_cards": {"modeling_llava"},  # only to complete an old config, inside a function: no torch on import
    # Three peers: none imports another, so each can be read, tested and changed alone.
    "trainers": {"modeling_llava", "processing", "hub_cards"},
    "evaluation": {"modeling_llava", "processing", "hub_cards"},
    "serving": {"modeling_llava", "processing", "hub_cards"},
    "command_line": {"modeling_llava", "processing", "hub_cards", "trainers", "evaluation", "serving"},
}


def project_imports(package: str) -> dict[str, set[str]]:
    """The project packages each module of `package` imports (absolute imports; relative ones stay inside)."""
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = (names & PROJECT) - {package}
    return found


@pytest.mark.parametrize("package", ALLOWED)
def test_no_package_imports_one_above_it(package):
    modules = project_imports(package)
    assert modules  # the package was found and read
    wrong = {module: names - ALLOWED[package] for module, names in modules.items() if names - ALLOWED[package]}
    assert not wrong


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
    (tmp_path / "processing").mkdir()
    (tmp_path / "processing" / "bad.py").write_text("from trainers.train import main\nimport modeling_llava\n")
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    assert project_imports("processing") == {"processing/bad.py": {"trainers", "modeling_llava"}}


def test_every_shipped_package_is_checked_and_installed():
    """A new top-level package must be placed in the order above and listed in pyproject's packages."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    packages = {path.parent.name for path in ROOT.glob("*/__init__.py")} - {"benchmarks", "tests"}
    assert packages == set(SHIPPED) == set(ALLOWED)
    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert {name.split(".")[0] for name in listed} == set(SHIPPED)


def test_no_package_holds_more_than_40_percent_of_the_shipped_code():
    lines = {
        package: sum(len(path.read_text().splitlines()) for path in (ROOT / package).rglob("*.py"))
        for package in SHIPPED
    }
    total = sum(lines.values())
    assert max(lines.values()) <= 0.4 * total, {package: f"{count / total:.0%}" for package, count in lines.items()}
