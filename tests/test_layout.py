"""The package's layout: imports go only downward through the layers, no module imports itself back
through others, and no module grows past 400 lines.

The layers, lowest first (a module may import its own package and any lower layer, never a higher one,
nor a sibling package of its own layer). Imports inside functions count too: they are there to keep
`--help` free of torch, never to hide a cycle.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "trainer"
LAYERS = [
    {"errors"},
    {"config"},
    {"checkpointing"},
    {"parts"},
    {"data"},
    {"optim", "evaluation"},
    {"engine"},
    {"reporting"},
    {"sweeps"},
    {"run"},
    {"deployment"},
    {"__main__", "evaluate", "predict", "lr_preview", "report", "export"},  # the commands
]
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str) -> set:
    """The trainer modules `name` imports anywhere in its file (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from trainer.x import y` imports the module trainer.x.y when there is one, else names of trainer.x
            targets = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in MODULES else node.module
                       for alias in node.names]
        else:
            continue
        found |= {target for target in targets if target in MODULES and target != name}
    return found - {"trainer"}


GRAPH = {name: imports_of(name) for name in MODULES}


def unit(name: str) -> str:
    """The package (trainer.engine.loop -> engine) or top-level module (trainer.errors -> errors)."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer(name: str) -> int:
    for level, units in enumerate(LAYERS):
        if unit(name) in units:
            return level
    raise AssertionError(f"{name} belongs to no layer: add its package to LAYERS in this test (and to docs/design.md)")


def test_every_module_has_a_layer():
    for name in MODULES:
        if name != "trainer":
            layer(name)


def test_imports_go_only_downward():
    upward = [
        f"{name} -> {target}"
        for name, targets in GRAPH.items() if name != "trainer"
        for target in sorted(targets)
        if layer(target) > layer(name) or (layer(target) == layer(name) and unit(target) != unit(name))
    ]
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def test_no_import_cycles():
    order, state = [], {}

    def visit(name, path):
        if state.get(name) == "done":
            return
        if state.get(name) == "open":
            cycle = path[path.index(name):] + [name]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        state[name] = "open"
        for target in sorted(GRAPH[name]):
            visit(target, path + [name])
        state[name] = "done"
        order.append(name)

    for name in MODULES:
        visit(name, [])


def test_no_module_over_400_lines():
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by what they do): {long}"


def test_the_graph_sees_imports_inside_functions():
    """The check is only as good as its reading of the files: a function-level import is an edge too."""
    assert "trainer.run.assembly" in GRAPH["trainer.__main__"]  # imported inside train(), for start-up speed
    assert "trainer.engine.place" in GRAPH["trainer.engine.distributed"]
