"""pytest imports test files by basename (rootdir-relative, no packages): two files with one name break
collection of the whole suite, which only shows when every folder is collected together, as in CI."""

from collections import Counter
from pathlib import Path


def test_test_file_names_are_unique():
    names = Counter(p.name for p in Path(__file__).parent.rglob("test_*.py"))
    assert [name for name, n in names.items() if n > 1] == []


import ast

PACKAGE = Path(__file__).resolve().parents[1] / "lite_delta"
STAGES = ("meter", "generate", "pairs", "train", "evaluate")


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) of every absolute `import` / `from ... import` in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names]
    return found


def test_a_stage_imports_no_other_stage():
    """STYLE.md: what two stages share lives in a room below both (models/, inference/, progress, ...)."""
    crossings = []
    for stage in STAGES:
        for path in (PACKAGE / stage).rglob("*.py"):
            for module, _ in _imports(path):
                parts = module.split(".")
                if parts[0] == "lite_delta" and len(parts) > 1 and parts[1] in STAGES and parts[1] != stage:
                    crossings.append(f"{path.relative_to(PACKAGE)} imports {module}")
    assert crossings == []


def test_no_private_name_is_imported_from_another_module():
    leaks = [f"{path.relative_to(PACKAGE.parent)}: {module}.{name}"
             for path in list(PACKAGE.rglob("*.py")) + list((PACKAGE.parent / "tests").rglob("*.py"))
             for module, names in _imports(path) if module.startswith("lite_delta")
             for name in names if name.startswith("_") and not name.startswith("__")]
    assert leaks == []
