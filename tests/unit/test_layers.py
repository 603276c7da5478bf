"""The package's layering: no import cycle, and no module imports one of a layer above its own.

Every import counts, at module level, inside functions and under ``if TYPE_CHECKING:`` alike:
a cycle hidden from the interpreter is still one for the reader. A new module or package must
be given a layer here (the test fails until it is).
"""

from __future__ import annotations

import ast
from pathlib import Path

import mce_router

PACKAGE = Path(mce_router.__file__).resolve().parent

#: Lowest first. A module may import modules of its own layer or of the layers below. Within a
#: layer, packages may import each other only without a cycle.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "arns", "aio", "examples"),  # leaves
    # The load-test harness is a client of any SageMaker-compatible runtime (this router, a
    # container, real SageMaker): it speaks HTTP and reads /metrics, so it needs none of the
    # router's modules, and this low layer keeps it that way. Only the cli imports it.
    ("loadtest",),
    ("shapes", "spec", "security"),  # reading request bodies, their shapes; SigV4 and IAM
    ("config",),  # the router config (its auth section is security's)
    ("runtime", "dataplane", "metrics"),  # containers; the hot path; metrics of both
    ("tracing",),  # spans and the hop log, on the hot path's hooks
    ("workers",),  # data-plane worker processes and their copy of the routing table
    ("control",),  # state file, models and endpoint configs, statuses, listing
    ("endpoints",),  # endpoint state machine, fleets, health checks, restart recovery
    ("check",),  # the container contract checker (a tool over the runtimes)
    ("admin",),  # the admin listener: aiohttp app and the JSON 1.1 control plane
    ("router",),  # the composition root
    ("cli", "__init__", "__main__"),  # the command line; the package's public names
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(path): path
        for path in sorted(PACKAGE.rglob("*.py"))
        if "vendor" not in path.parts
    }


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules that ``name`` imports (resolved to submodules where named)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            targets = [module]
            targets += [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            if target in known and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _layer(module: str) -> int:
    top = _top(module)
    for index, layer in enumerate(LAYERS):
        if top in layer:
            return index
    raise AssertionError(f"{module}: give its top-level module or package {top!r} a layer")


def test_every_module_has_a_layer() -> None:
    for module in _graph():
        _layer(module)


def test_no_module_imports_one_above_it() -> None:
    upward = [
        f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})"
        for module, targets in _graph().items()
        for target in sorted(targets)
        if _layer(target) > _layer(module)
    ]
    assert not upward, "\n".join(upward)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (as the path around it), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (found := visit(target)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_no_import_cycle_between_modules() -> None:
    graph = _graph()
    # A package's __init__ re-exporting its own submodules is not a cycle of concerns.
    without_reexports = {
        module: {t for t in targets if not (t.startswith(module + ".") and _is_package(module))}
        for module, targets in graph.items()
    }
    cycle = _cycle(without_reexports)
    assert cycle is None, " -> ".join(cycle or ())


def test_no_import_cycle_between_packages() -> None:
    tops: dict[str, set[str]] = {}
    for module, targets in _graph().items():
        tops.setdefault(_top(module), set()).update(
            _top(t) for t in targets if _top(t) != _top(module)
        )
    cycle = _cycle(tops)
    assert cycle is None, " -> ".join(cycle or ())


def _is_package(module: str) -> bool:
    return (PACKAGE.parent / module.replace(".", "/") / "__init__.py").exists()


def test_the_checker_sees_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
