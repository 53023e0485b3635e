"""The package's layering (``../shared/STYLE.md`` item 1): imports only go downward.

layers -> blocks -> models is the model's own stack; the checkpoint format and the data pipeline sit on
the model; training, evaluation, export and the command-line helpers sit on top and never import one
another (evaluating or exporting a checkpoint needs nothing of training). Function-level imports
count as much as module-level ones.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "mobilevit_torch"

# Lowest first. A unit is a subpackage (``layers``) or a module at the package's top (``files``).
TIERS: list[set[str]] = [
    {"files", "checks", "lazy", "hub_ids", "preprocessing", "metrics", "graphed"},
    {"layers"},
    {"blocks"},
    {"models", "registry", "weights"},  # the registry builds models; weights load into them
    {"checkpoint", "data"},
    {"training", "evaluation", "export", "cli"},
]
APPLICATIONS = {"training", "evaluation", "export", "cli"}
TIER = {unit: level for level, units in enumerate(TIERS) for unit in units}


def unit_of(module: str) -> str:
    """``mobilevit_torch.training.loop`` -> ``training``; ``mobilevit_torch`` itself -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def package_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import of this package in ``path``, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
            if node.module == "mobilevit_torch":  # from mobilevit_torch import training
                modules = [f"mobilevit_torch.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        else:
            continue
        found += [(node.lineno, module) for module in modules if module.split(".")[0] == "mobilevit_torch"]
    return found


def module_files() -> list[Path]:
    return sorted(path for path in PACKAGE.rglob("*.py") if path != PACKAGE / "__init__.py")  # it re-exports


def test_every_unit_of_the_package_has_a_tier() -> None:
    units = {unit_of(".".join(path.relative_to(REPO).with_suffix("").parts)) for path in module_files()}
    assert units == set(TIER), f"units without a tier: {sorted(units - set(TIER))}; gone: {sorted(set(TIER) - units)}"


@pytest.mark.parametrize("path", module_files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_downward(path: Path) -> None:
    here = unit_of(".".join(path.relative_to(REPO).with_suffix("").parts))
    wrong = []
    for line, module in package_imports(path):
        there = unit_of(module)
        if there == here:
            continue
        if there not in TIER or TIER[there] > TIER[here]:
            wrong.append(f"line {line}: {module} (above {here})")
        elif here in APPLICATIONS and there in APPLICATIONS:
            wrong.append(f"line {line}: {module} (one application importing another)")
    assert not wrong, f"{path.relative_to(REPO)}: " + "; ".join(wrong)


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "def f():\n    from mobilevit_torch.training.loop import train\n    from mobilevit_torch import export\n"
    )
    assert package_imports(source) == [(2, "mobilevit_torch.training.loop"), (3, "mobilevit_torch.export")]
