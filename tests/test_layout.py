"""The packages import one another in one direction only (read from the source, local imports included).

blocks <- general <- latency tables <- the search <- architecture training <- experiments: a module
may import from its own room and the rooms before it, never from a later one.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# room -> module prefixes it must not import
FORBIDDEN = {
    "fbnet_building_blocks": ("supernet_functions", "architecture_functions"),
    "general_functions": ("supernet_functions", "architecture_functions"),
    "supernet_functions/latency": (
        "architecture_functions",
        "supernet_functions.experiments",
        *(f"supernet_functions.{m.stem}" for m in (ROOT / "supernet_functions").glob("*.py")),
    ),
    "supernet_functions": ("architecture_functions", "supernet_functions.experiments"),
}
# the two old entry-point paths only forward to their new place in experiments/
FORWARDERS = {"supernet_functions/evaluate_search.py", "supernet_functions/darts_vs_fbnet.py"}


def _imports(path: Path, source: str | None = None) -> set[str]:
    """Every module and name the file at ``path`` imports (``source``: its text, read when None)."""
    names = set()
    source = path.read_text() if source is None else source
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: resolved against the file's package
                package = path.relative_to(ROOT).with_suffix("").parts[:-1]
                base = ".".join(package[: len(package) - node.level + 1])
                module = f"{base}.{module}" if module else base
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def _room_files(room: str) -> list[Path]:
    folder = ROOT / room
    # a package's own modules; its sub-packages are rooms of their own
    return (
        sorted(folder.glob("*.py"))
        if room == "supernet_functions"
        else sorted(folder.rglob("*.py"))
    )


@pytest.mark.parametrize("room", FORBIDDEN)
def test_no_room_imports_a_later_one(room):
    files = [p for p in _room_files(room) if str(p.relative_to(ROOT)) not in FORWARDERS]
    assert files
    bad = [
        f"{p.relative_to(ROOT)} imports {name}"
        for p in files
        for name in sorted(_imports(p))
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[room])
    ]
    assert not bad, "\n".join(bad)


def test_the_check_sees_a_forbidden_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from architecture_functions.export import main\n")
    assert "architecture_functions.export.main" in _imports(module)
    # a relative import is read as the absolute one it stands for
    inner = ROOT / "supernet_functions" / "latency" / "table.py"
    assert "supernet_functions.latency.measure.build_lut" in _imports(
        inner, "from .measure import build_lut"
    )
    assert "supernet_functions.sampling.x" in _imports(inner, "from ..sampling import x")
