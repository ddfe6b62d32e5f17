"""The package's import graph has no cycle: every module can be read (and imported) after
the modules it depends on. Imports inside functions count too; ``importlib`` calls by name
(the kernel registry's loader) do not, as they are not dependencies of the module."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "numbadlrm"


def module_graph() -> dict[str, set[str]]:
    """{module: modules of this package it imports}, from the source files."""
    files = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = path
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                graph[name] |= {a.name for a in node.names if a.name in files}
            elif isinstance(node, ast.ImportFrom):
                base = here[: len(here) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:  # a submodule by its name, else the module itself
                    sub = f"{target}.{alias.name}"
                    found = sub if sub in files else target
                    if found in files and found != name:
                        graph[name].add(found)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt, path)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [])):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(module_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    graph = module_graph()
    assert "numbadlrm.kernels.registry" in graph["numbadlrm.kernels.gemm.fp32"]
    assert find_cycle(graph) is None


# The layers of the package, lowest first: a module imports only modules of its own
# package (folder) or of a strictly lower layer. The longest matching prefix gives a
# module its layer.
LAYERS = {
    "numbadlrm": -1,  # the package's __init__: __version__, and the public API loaded lazily
    "numbadlrm.config": 0,  # frozen configs: no package imports
    "numbadlrm.runtime": 0,  # CPU detection, thread pools' environment, profiling
    "numbadlrm.io.files": 0,  # atomic writes, used by data/ and io/ alike
    "numbadlrm.reference": 1,  # the NumPy oracle and teaching text
    "numbadlrm.optim.reference": 2,  # the optimizers' NumPy oracle (kernels name it)
    "numbadlrm.kernels": 3,  # @njit and LLVM IR only
    "numbadlrm.runtime.threads": 4,  # sets the kernels' thread pools (the blas backend's)
    "numbadlrm.batch": 4,  # checks its lookups with a kernel
    "numbadlrm.layers": 4,  # validating wrappers, one op per file
    "numbadlrm.optim": 5,
    "numbadlrm.model": 6,
    "numbadlrm.kernels.checks": 6,  # what each op must compute: against reference, layers, optim
    "numbadlrm.data": 7,
    "numbadlrm.io": 8,  # checkpoints read the data's vocabulary and the model's state shapes
    "numbadlrm.train": 9,
    "numbadlrm.parallel": 10,  # DistributedDLRM and the MPI entry over the training loop
    "numbadlrm.interop": 10,
    "numbadlrm.cli": 11,
}


def layer_of(module: str) -> tuple[int, str]:
    """(layer, the prefix that gave it) of a module."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in LAYERS:
            return LAYERS[prefix], prefix
    raise AssertionError(f"{module}: no layer in LAYERS")


def folder(module: str, path_is_package: bool) -> str:
    return module if path_is_package else module.rsplit(".", 1)[0]


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    out = []
    for module, imports in graph.items():
        if module == "numbadlrm":
            continue  # its imports are for type checkers; the names load on first use
        rank, _ = layer_of(module)
        for target in imports:
            if target.rsplit(".", 1)[0] == module.rsplit(".", 1)[0] and "." in module[10:]:
                continue  # the same folder
            target_rank, _ = layer_of(target)
            same_prefix = layer_of(target)[1] == layer_of(module)[1]
            if target_rank >= rank and not same_prefix:
                out.append(f"{module} (layer {rank}) imports {target} (layer {target_rank})")
    return sorted(out)


def test_no_module_imports_a_higher_or_sibling_layer():
    violations = layering_violations(module_graph())
    assert not violations, "\n".join(violations)


def test_the_layering_check_finds_an_upward_import():
    graph = {"numbadlrm.kernels.gemm.fp32": {"numbadlrm.model.dlrm"}, "numbadlrm.model.dlrm": set()}
    assert layering_violations(graph) == [
        "numbadlrm.kernels.gemm.fp32 (layer 3) imports numbadlrm.model.dlrm (layer 6)"
    ]
    assert layering_violations({"numbadlrm.model.dlrm": {"numbadlrm.kernels.registry"}}) == []


MAX_LINES = 450


def test_no_module_is_longer_than_450_lines():
    long = {
        str(p.relative_to(PACKAGE.parent)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_every_folder_says_what_lives_there():
    for init in PACKAGE.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc.split()) >= 8, f"{init}: needs a docstring saying what lives here"
