"""The import layers of docs/architecture.md, enforced: a package never imports a higher one.

Every import counts, function-level ones included (the module's whole AST is walked),
so a layer break cannot hide inside a function.
"""
import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parent.parent / "src" / "compresslab"

#: Lowest first. A module may import its own layer and any lower one.
LAYERS = [
    {"errors"},
    {"progress", "figures", "scratch", "console", "device", "ort", "torch_ao", "codesign"},
    {"data"},
    {"models"},
    {"train"},
    {"measure"},
    {"compress"},
    {"runs"},
    {"steps"},
    {"report"},
    {"study"},
    {"export", "fidelity", "export_hls"},
    {"api", "live", "mixed_precision", "codesign_pipeline", "ner"},
    {"cli"},
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def layer_of(module: str) -> str | None:
    """``compresslab.steps.common`` -> ``steps``; None outside the package or for ``compresslab`` itself."""
    parts = module.split(".")
    return parts[1] if parts[0] == "compresslab" and len(parts) > 1 else None


def imports(path: Path, root: Path = SRC) -> list[tuple[int, str]]:
    """``(line, module)`` for every import in the file, relative ones resolved."""
    package = ".".join(path.relative_to(root.parent).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module) if p)
            out.append((node.lineno, module))
            out += [(node.lineno, f"{module}.{a.name}") for a in node.names if module == "compresslab"]
    return out


def violations(root: Path = SRC) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        me = layer_of(".".join(path.relative_to(root.parent).with_suffix("").parts))
        if me is None or me == "__init__":
            continue
        for line, module in imports(path, root):
            other = layer_of(module)
            if other in RANK and RANK[other] > RANK[me]:
                found.append(f"{path.relative_to(root.parent)}:{line}: {me} imports {module} ({other} is above it)")
    return found


def test_every_package_has_a_layer():
    packages = {p.stem if p.is_file() else p.name for p in SRC.iterdir()
                if (p.suffix == ".py" or (p / "__init__.py").is_file()) and p.name != "__init__.py"}
    assert packages == set(RANK), "add the new package to LAYERS here and to docs/architecture.md"


def test_no_layer_imports_a_higher_one():
    assert violations() == []


def test_the_check_sees_function_level_imports(tmp_path):
    pkg = tmp_path / "compresslab"
    (pkg / "data").mkdir(parents=True)
    (pkg / "data" / "__init__.py").write_text("")
    (pkg / "data" / "bad.py").write_text("def f():\n    from compresslab.study import run_kind\n")
    (pkg / "data" / "rel.py").write_text("from ..steps import build\n")
    assert violations(pkg) == [
        "compresslab/data/bad.py:2: data imports compresslab.study (study is above it)",
        "compresslab/data/rel.py:1: data imports compresslab.steps (steps is above it)",
    ]


@pytest.mark.parametrize("module, layer", [("compresslab.steps.common", "steps"), ("compresslab", None),
                                           ("torch.nn", None)])
def test_layer_of(module, layer):
    assert layer_of(module) == layer
