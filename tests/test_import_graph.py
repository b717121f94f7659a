"""The package's import graph, read with ``ast`` (every import, also those inside functions: a lazy import is still
a dependency): it has no cycle, and only ``lm_eval_iti/harness/`` imports lm_eval."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "lm_eval_iti"


def module_name(path: Path, root: Path, package: str) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([package, *parts])


def imports_of(path: Path, root: Path, package: str) -> list[tuple[str, str]]:
    """(name, fallback) of everything ``path`` imports: ``from a import b`` gives (``a.b``, ``a``): b is the module
    ``a.b`` if there is one, else a name defined in ``a``."""
    name = module_name(path, root, package)
    is_package = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.extend((alias.name, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - (node.level - 1)] if is_package else base[: len(base) - node.level]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            out.extend((f"{source}.{alias.name}", source) for alias in node.names)
    return out


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """{module: modules of the package it imports}. An import names its module, not the packages above it (those
    are always imported first, so an edge to one's own parent package is no cycle of ours)."""
    files = {module_name(p, root, package): p for p in sorted(root.rglob("*.py"))}
    graph = {}
    for name, path in files.items():
        targets = {m if m in files else fallback for m, fallback in imports_of(path, root, package)}
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph(PACKAGE_DIR, "lm_eval_iti")
    assert len(graph) > 50 and "lm_eval_iti.harness.taskfns" in graph["lm_eval_iti.harness.model"] | graph[
        "lm_eval_iti.harness.driver"] | {"lm_eval_iti.harness.taskfns"}
    assert graph["lm_eval_iti.harness.taskfns"] >= {"lm_eval_iti.judges.glue", "lm_eval_iti.prompts"}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def layer_of(module: str) -> str:
    """A module's layer: its subpackage (experiments, harness, ...), or "core" for the package's own modules."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (PACKAGE_DIR / parts[1]).is_dir()) else "core"


def layer_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for source, targets in graph.items():
        for target in targets:
            if layer_of(source) != layer_of(target):
                out.setdefault(layer_of(source), set()).add(layer_of(target))
    return out


def test_subpackages_and_the_core_form_no_cycle():
    """Module cycles are not the only debt: a subpackage that imports another which imports it back (even through
    different modules, even lazily) is one too. The package's own modules (the core) import no subpackage."""
    layers = layer_graph(import_graph(PACKAGE_DIR, "lm_eval_iti"))
    assert find_cycle(layers) is None, " -> ".join(find_cycle(layers))
    assert not layers.get("core"), layers.get("core")  # the core imports no subpackage
    assert {"core", "harness"} <= layers["experiments"] and "experiments" in layers["commands"]


def test_a_planted_subpackage_cycle_is_found():
    graph = {"lm_eval_iti.fit": {"lm_eval_iti.experiments.side_effects"},
             "lm_eval_iti.experiments.side_effects": {"lm_eval_iti.errors"}, "lm_eval_iti.errors": set()}
    assert find_cycle(layer_graph(graph)) == ["core", "experiments", "core"]


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


@pytest.mark.parametrize("files, cycle", [
    # the cycle issue 15 found: glue imports the task functions lazily, the task functions import glue lazily
    ({"__init__.py": "", "judges/__init__.py": "", "taskfns.py": "def f():\n    from .judges.glue import g\n",
      "judges/glue.py": "def g():\n    from .. import taskfns\n"},
     ["pkg.judges.glue", "pkg.taskfns", "pkg.judges.glue"]),
    ({"__init__.py": "", "a.py": "import pkg.b\n", "b.py": "from pkg import c\n", "c.py": "from .a import x\n"},
     ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]),
])
def test_a_planted_cycle_is_found(tmp_path, files, cycle):
    _write(tmp_path / "pkg", files)
    graph = import_graph(tmp_path / "pkg", "pkg")
    assert find_cycle(graph) == cycle
    # and with the back edge removed, none is left
    graph[cycle[-2]].discard(cycle[-1])
    assert find_cycle(graph) is None


def test_a_package_import_resolves_to_its_init_and_submodules(tmp_path):
    _write(tmp_path / "pkg", {"__init__.py": "from .sub import thing\n", "sub/__init__.py": "from . import leaf\n",
                              "sub/leaf.py": "from ..sub import other\n"})
    graph = import_graph(tmp_path / "pkg", "pkg")
    assert graph == {"pkg": {"pkg.sub"}, "pkg.sub": {"pkg.sub.leaf"}, "pkg.sub.leaf": {"pkg.sub"}}
    assert find_cycle(graph) == ["pkg.sub", "pkg.sub.leaf", "pkg.sub"]


def test_only_the_harness_imports_lm_eval():
    outside = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        for name, _ in imports_of(path, PACKAGE_DIR, "lm_eval_iti"):
            if (name == "lm_eval" or name.startswith("lm_eval.")) and "harness" not in path.relative_to(PACKAGE_DIR).parts:
                outside.append(f"{path.relative_to(PACKAGE_DIR)}: {name}")
    assert not outside, outside
    # the check sees lm_eval imports at all (the harness has them)
    harness = [n for p in (PACKAGE_DIR / "harness").glob("*.py") for n, _ in imports_of(p, PACKAGE_DIR, "lm_eval_iti")]
    assert any(n.startswith("lm_eval.") for n in harness)


def test_the_task_yamls_call_only_the_harness_task_functions():
    """Every ``!function`` of the packaged tasks points into one module, and each name exists there."""
    import re

    from lm_eval_iti.harness import taskfns

    from lm_eval_iti.harness.plugin import tasks_dir

    refs = [m for p in sorted(tasks_dir().iterdir()) if p.is_file()
            for m in re.findall(r"!function\s+(\S+)", p.read_text())]
    assert len(refs) > 20
    for ref in refs:
        module, _, name = ref.rpartition(".")
        assert module == "lm_eval_iti.harness.taskfns" and callable(getattr(taskfns, name)), ref
    assert not tasks_dir().is_symlink() and tasks_dir() == PACKAGE_DIR.parent / "tasks"  # the top-level folder
