"""The doors of DESIGN.md §1: each third-party library enters through its own module, and the pipeline's
arrows point one way (sources never know the checks, analysers never know the sources, renderers read
only the report)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "imgaudit"

DOORS = {
    "lief": {"elf.py"},
    "click": {"cli.py", "cli_ldd.py", "cli_size.py"},
    # docker.auth reads the user's credential store for registry pulls (issue 5 asks for the SDK's helpers)
    "docker": {"sources/daemon.py", "sources/auth.py"},
    # the daemon module catches the requests errors the docker SDK raises through
    "requests": {"sources/registry.py", "sources/daemon.py"},
    "rich": {"progress.py", "render/table.py", "render/size_text.py", "render/linkage_text.py",
             "render/compare.py"},
}

FORBIDDEN = {  # module prefix → imgaudit modules it must not import
    "sources/": ("imgaudit.checks", "imgaudit.render", "imgaudit.loader", "imgaudit.policy", "imgaudit.cli"),
    # checks may word sizes with render.text's human(): a pure helper, not a renderer
    "checks/": ("imgaudit.sources", "imgaudit.render.json", "imgaudit.render.table", "imgaudit.render.sarif",
                "imgaudit.render.markdown", "imgaudit.cli"),
    "loader.py": ("imgaudit.sources", "imgaudit.checks", "imgaudit.render"),
    "rootfs.py": ("imgaudit.sources", "imgaudit.checks", "imgaudit.render", "imgaudit.elf"),
    "layers.py": ("imgaudit.sources", "imgaudit.checks", "imgaudit.render", "imgaudit.rootfs"),
    # `imgaudit ldd` renders the loader's Resolution itself: that is its model, as Report is inspect's
    "render/": ("imgaudit.sources", "imgaudit.checks", "imgaudit.audit", "imgaudit.cli"),
}


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules() -> dict[str, set[str]]:
    return {p.relative_to(PACKAGE).as_posix(): imports(p) for p in PACKAGE.rglob("*.py")}


def test_each_library_enters_through_its_door() -> None:
    wrong = [
        f"{module} imports {lib}"
        for module, names in modules().items()
        for lib, doors in DOORS.items()
        if module not in doors and any(n == lib or n.startswith(lib + ".") for n in names)
    ]
    assert wrong == []


def test_the_pipeline_arrows_point_one_way() -> None:
    wrong = [
        f"{module} imports {name}"
        for module, names in modules().items()
        for prefix, banned in FORBIDDEN.items()
        if module.startswith(prefix)
        for name in names
        if name.startswith(banned)
    ]
    assert wrong == []
