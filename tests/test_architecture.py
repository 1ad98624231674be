"""The package's layering (docs/ARCHITECTURE.md): imports point down the layers, no cycles, small modules."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "rasft_mlx"

# Lower layers first; a module may import its own layer's rooms and any lower layer's.
LAYERS = [
    {"__init__", "runtime", "console"},
    {"recipe"},
    {"data"},
    {"models"},
    {"generation"},
    {"training"},
    {"rasft", "reporting", "evaluation"},
    {"export", "commands"},
    {"experiments"},
    {"cli"},
]
# Within a layer, rooms that must not import each other.
SEPARATE = [("export", "commands"), ("rasft", "reporting"), ("rasft", "evaluation")]
# The top level holds the command line and the scripting surface; every other module sits in a room.
TOP_LEVEL_MODULES = {"__init__.py", "cli.py"}
TOP_LEVEL_SURFACE = "__init__"  # the public surface imports lazily, from anywhere
MAX_LINES = 420


def room_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer_of(room: str) -> int:
    for index, rooms in enumerate(LAYERS):
        if room in rooms:
            return index
    raise AssertionError(f"room {room!r} is in no layer of tests/test_architecture.py")


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """Every rasft_mlx module this file imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("rasft_mlx"):
                found.add(node.module)
                for alias in node.names:
                    candidate = f"{node.module}.{alias.name}"
                    if (PACKAGE.parent / candidate.replace(".", "/")).with_suffix(".py").exists():
                        found.add(candidate)
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: relative import; the package uses absolute imports")
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("rasft_mlx"))
    return found


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): imported_modules(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_imports_point_down_the_layers():
    wrong = []
    for module, imports in import_graph().items():
        room = room_of(module)
        if module == "rasft_mlx" or room == TOP_LEVEL_SURFACE:
            continue
        for target in imports:
            target_room = room_of(target)
            if target == "rasft_mlx":
                wrong.append(f"{module} imports the public surface rasft_mlx")
            elif layer_of(target_room) > layer_of(room):
                wrong.append(f"{module} ({room}) imports {target} ({target_room}), a higher layer")
            elif (room, target_room) in SEPARATE or (target_room, room) in SEPARATE:
                wrong.append(f"{module} imports {target}: {room} and {target_room} stay separate")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    graph = import_graph()
    modules = {m for m in graph}
    edges = {m: {t for t in graph[m] if t in modules and t != m} for m in graph}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                cycles.append(" -> ".join(stack[stack.index(target) :] + [target]))
            elif target not in state:
                visit(target, stack + [target])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    # Package __init__ files import nothing, so a submodule importing its package is no cycle.
    assert not cycles, "\n".join(cycles)


def test_training_does_not_import_the_planner_or_rasft():
    for module, imports in import_graph().items():
        if room_of(module) == "training":
            assert not {t for t in imports if room_of(t) in ("experiments", "rasft", "commands")}


def test_only_the_command_line_and_the_surface_sit_at_the_top():
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in TOP_LEVEL_MODULES)
    assert not loose, f"modules outside a room: {loose}; move them into a named room"


def test_every_room_is_in_a_layer_and_documented():
    architecture = (PACKAGE.parent / "docs" / "ARCHITECTURE.md").read_text()
    for room in sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()):
        layer_of(room)
        assert f"`{room}/`" in architecture, f"docs/ARCHITECTURE.md does not describe {room}/"


def test_evaluation_lives_in_one_room():
    """Everything that scores a model sits in evaluation/; training/ only calls it through a hook."""
    for module in import_graph():
        name = module.rsplit(".", 1)[-1]
        if room_of(module) != "evaluation":
            assert not re.search(r"evaluat|drift|outcome", name), f"{module} belongs in evaluation/"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: p.name)
def test_modules_stay_small(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE.parent)} has {lines} lines"


def test_the_layer_test_catches_an_upward_import(tmp_path):
    """The checker itself: a training module importing experiments is reported."""
    module = PACKAGE / "training" / "loop.py"
    assert "rasft_mlx.experiments.plan" not in imported_modules(module)
    fake = tmp_path / "fake.py"
    fake.write_text("def f():\n    from rasft_mlx.experiments.plan import build_plan\n")
    assert "rasft_mlx.experiments.plan" in imported_modules(fake)


def test_public_surface_resolves_to_the_library_functions():
    import rasft_mlx
    from rasft_mlx.commands.train import run_training
    from rasft_mlx.evaluation.benchmarks import run_evaluation
    from rasft_mlx.export.formats import export_run
    from rasft_mlx.recipe.config import load_recipe

    assert rasft_mlx.train is run_training
    assert rasft_mlx.evaluate is run_evaluation
    assert rasft_mlx.export_run is export_run
    assert rasft_mlx.load_recipe is load_recipe
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        _ = rasft_mlx.trian
