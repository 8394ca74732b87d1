"""The layers of docs/ARCHITECTURE.md: imports only point down, and no family imports a later one.

Every ``import``/``from … import`` of a trilemma module anywhere in a file (module level or inside a
function) is checked, so a function-level import cannot hide an upward arrow.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "trilemma"

# Families, in the order in which they may import each other (a family imports only earlier ones).
FAMILIES = ["ddpm", "vae", "gan", "autoencoder", "ldm", "t2i", "ddgan"]
LAYERS = [
    ("foundation", ["trilemma", "errors", "config", "options", "utils"]),
    ("shared", ["data", "nets", "diffusion", "viz", "run", "metrics", "train"]),
    ("families", FAMILIES),
    ("registry", ["registry"]),
    ("experiments", ["experiments"]),
    ("cli", ["cli", "__main__", "ui"]),
]
RANK = {name: i for i, (_, names) in enumerate(LAYERS) for name in names}


def top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "trilemma"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "trilemma":
                out += [(node.lineno, f"trilemma.{a.name}") for a in node.names if a.name != "__version__"]
            elif node.module.startswith("trilemma."):
                out.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("trilemma.")]
    return out


def violations() -> list[str]:
    problems = []
    for path in sorted(PKG.rglob("*.py")):
        here = top(module_name(path))
        assert here in RANK, f"{path}: package {here!r} is in no layer of docs/ARCHITECTURE.md"
        for line, target in imports(path):
            there = top(target)
            where = f"{path.relative_to(ROOT)}:{line}: imports {target}"
            if there not in RANK:
                problems.append(f"{where} (a package in no layer)")
            elif RANK[there] > RANK[here]:
                problems.append(f"{where} ({LAYERS[RANK[here]][0]} -> {LAYERS[RANK[there]][0]}: an upward arrow)")
            elif here in FAMILIES and there in FAMILIES and FAMILIES.index(there) > FAMILIES.index(here):
                problems.append(f"{where} (family {here} imports the later family {there})")
    return problems


def test_imports_only_point_down():
    problems = violations()
    assert not problems, "\n" + "\n".join(problems)


def test_every_family_has_the_same_file_names():
    from trilemma.registry import FAMILIES as REGISTERED

    for family in REGISTERED:                  # every registered family (a new one registers when it can train)
        folder = PKG / family
        names = {p.name for p in folder.glob("*.py")}
        assert {"__init__.py", "config.py", "train.py", "run.py"} <= names, (family, sorted(names))
    assert not (PKG / "runs.py").exists() and not list(PKG.rglob("pipeline.py"))


def test_the_checker_sees_function_level_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def g():\n    from trilemma.cli.main import main\n    import trilemma.registry\n")
    assert [t for _, t in imports(f)] == ["trilemma.cli.main", "trilemma.registry"]
