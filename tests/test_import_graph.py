"""The package's import graph has no cycle (issue 26, item 5).

The graph is built statically: every ``.py`` file of the installed package's source folders (``attnrl/``, and the
top-level ``kernels/`` and ``rewards/`` folders, which install as ``attnrl.kernels`` and ``attnrl.rewards``) is
parsed with :mod:`ast`; each ``import attnrl...``, ``from attnrl... import ...`` and relative import becomes an edge
from the importing module to the imported one.

What counts as an edge:

- imports at module top level **and inside functions and methods**. A function-level import is still a dependency:
  it runs whenever the function does, and it is how a cycle usually hides (the cycle this test was written for,
  ``recipes.task -> distributed.launcher -> recipes.grpo -> recipes.task``, went through an import inside
  ``launcher.default_runner``). Deferring an import keeps start-up light; it does not make the layering acyclic.
- ``from pkg import name`` is an edge to ``pkg.name`` when that is a module of the package, else to ``pkg``.
- imports under ``if TYPE_CHECKING:`` are skipped (they never run).
- a module is not given implicit edges to its parent packages (importing ``attnrl.a.b`` runs ``attnrl/__init__``
  and ``attnrl/a/__init__`` first, but a package ``__init__`` re-exporting its submodules is not a cycle).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# source folder -> the package name it installs as (pyproject.toml [tool.setuptools.package-dir])
SOURCES = {"attnrl": ROOT / "attnrl", "attnrl.kernels": ROOT / "kernels", "attnrl.rewards": ROOT / "rewards"}
PACKAGE = "attnrl"


def package_modules() -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the package (``__init__`` files name the package)."""
    modules: dict[str, Path] = {}
    for package, folder in SOURCES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join((package, *parts))
            if package == PACKAGE and name.startswith(("attnrl.kernels", "attnrl.rewards")):
                continue  # not an attnrl/ subfolder in this layout; the top-level folder is the source
            modules[name] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    """Every Import / ImportFrom node (any depth: module level, functions, methods), minus TYPE_CHECKING blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules that module ``name`` (source ``path``) imports."""
    is_package = path.name == "__init__.py"
    here = name if is_package else name.rpartition(".")[0]  # the package relative imports start from
    targets: set[str] = set()

    def add(module: str, names: list[str] = ()) -> None:
        if not (module == PACKAGE or module.startswith(PACKAGE + ".")):
            return
        submodules = [f"{module}.{n}" for n in names if f"{module}.{n}" in modules]
        if submodules:
            targets.update(submodules)
        if len(submodules) < len(names) or not names:
            while module not in modules and "." in module:  # `import attnrl.a.b` of a module we do not know
                module = module.rpartition(".")[0]
            targets.add(module)

    for node in _import_nodes(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        else:
            if node.level:
                base = here.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            add(module, [alias.name for alias in node.names if alias.name != "*"])
    targets.discard(name)
    return targets


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or None (iterative depth-first search)."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(graph, WHITE)
    for start in sorted(graph):
        if colour[start] != WHITE:
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        colour[start] = GREY
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                colour[path.pop()] = BLACK
                stack.pop()
            elif colour.get(nxt, BLACK) == GREY:
                return path[path.index(nxt):] + [nxt]
            elif colour.get(nxt) == WHITE:
                colour[nxt] = GREY
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_the_graph_sees_the_package():
    """A sanity check of the builder itself: the sources map to their installed names, and both top-level and
    function-level imports (relative and absolute) become edges."""
    graph = import_graph()
    assert {"attnrl.cli", "attnrl.kernels.dispatch", "attnrl.kernels.reference", "attnrl.rewards.tasks"} <= graph.keys()
    assert "attnrl.rewards.completions" in graph["attnrl.rewards.tasks"]  # relative, top level, in rewards/
    assert "attnrl.kernels.dispatch" in graph["attnrl.credit.config"]  # absolute into the top-level kernels/ folder
    assert "attnrl.recipes.command" in graph["attnrl.recipes.grpo"]  # inside main()


def test_find_cycle_reports_the_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_package_import_graph_has_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
