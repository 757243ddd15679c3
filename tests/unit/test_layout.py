"""The package's shape: Ray's private names only in the seam, and no import cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import spotray

PACKAGE = Path(spotray.__file__).resolve().parent
SEAM = PACKAGE / "ray_compat"
PRIVATE_RAY = (
    "ray._private",
    "ray._raylet",
    "ray.train.v2._internal",
    "ray.autoscaler._private",
    "_internal_kv_",
    "ray.core.generated",
    "_initialize_and_run_controller",
)


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["spotray", *path.relative_to(PACKAGE).with_suffix("").parts]
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def test_only_the_seam_names_rays_private_api() -> None:
    outside = [
        f"{path.relative_to(PACKAGE.parent)} names {name}"
        for path in PACKAGE.rglob("*.py")
        if SEAM not in path.parents
        for name in PRIVATE_RAY
        if name in path.read_text()
    ]
    assert not outside, "Ray's private names belong in spotray/ray_compat: " + "; ".join(outside)


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every spotray module `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("spotray"):
            for alias in node.names:  # `from spotray.cluster import aws` imports a module
                full = f"{node.module}.{alias.name}"
                found.add(full if full in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("spotray"))
    return found


def test_no_import_cycle_among_spotray_modules() -> None:
    modules = _modules()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    unknown = sorted(f"{name} imports {dep}" for name, deps in graph.items() for dep in deps - modules.keys())
    assert not unknown, "imports of modules that do not exist: " + "; ".join(unknown)
    cycles = []

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycles.append(" -> ".join([*path[path.index(name) :], name]))
            return
        if name in done:
            return
        for dep in sorted(graph.get(name, ())):
            visit(dep, [*path, name])
        done.add(name)

    done: set[str] = set()
    for name in sorted(graph):
        visit(name, [])
    assert not cycles, "import cycles: " + "; ".join(cycles)


def test_the_layout_is_by_role() -> None:
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert {
        "cli",
        "cluster",
        "driver",
        "runtime",
        "elastic",
        "spot",
        "cost",
        "chaos",
        "ray_compat",
    } <= folders
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert loose == ["__init__.py", "config.py", "errors.py", "terminal.py", "workload.py"], loose
