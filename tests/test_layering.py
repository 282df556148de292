"""The one-way layering of docs/CONTRACTS.md ("Import direction"), checked over the real import graph.

Every ``import`` / ``from ... import`` in ``spruce/`` (module level and inside functions alike) and every
``importlib.import_module("spruce....")`` with a literal name is an edge. Entry scripts (``train.py``,
``export.py``, ``bench.py``, ``benchmarks/``, ``scripts/``, ``spruce/**/__main__.py`` and the listed command
modules) may import anything of the library; library code may import only what its layer allows, never an entry
script, and never runs a file by path.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: what each part of the library may import besides itself (docs/CONTRACTS.md, "Import direction").
#: ``spruce.io`` is a leaf every layer may use (it imports nothing of ours).
ALLOWED: dict[str, set[str]] = {
    "spruce.deploy": {"spruce.perf", "spruce.kernels", "spruce.sparse", "spruce.models", "spruce.prune",
                      "spruce.data"},
    "spruce.study": {"spruce.perf", "spruce.kernels", "spruce.sparse", "spruce.models", "spruce.prune",
                     "spruce.data"},
    "spruce.perf": {"spruce.kernels", "spruce.sparse"},
    "spruce.kernels": {"spruce.sparse"},
    "spruce.sparse": {"spruce.models"},  # the layer-shape source (spruce.models.shapes) for synthetic twins
    "spruce.models": {"spruce.data", "spruce.prune"},
    "spruce.prune": set(),
    "spruce.data": set(),
}
LEAVES = {"spruce", "spruce.io"}  # import nothing of ours (``spruce`` is the package's __init__)
#: modules inside the package that are commands (``python -m ...``), not library code
ENTRY_MODULES = {"spruce.kernels.cuda.gpu_smoke", "spruce.peer_worker"}
ENTRY_SCRIPTS = ("train", "export", "bench", "sweep")
RUN_BY_PATH = ("spec_from_file_location", "run_path", "runpy")


def module_name(path: Path, root: Path = ROOT) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """``(line, imported module)`` for every import in ``path`` (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    me = module_name(path, root)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = package.split(".")
                pkg = pkg[:len(pkg) - node.level + 1]
                base = ".".join(pkg + ([base] if base else []))
            out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names if a.name != "*"]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None))
              == "import_module" and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            out.append((node.lineno, node.args[0].value))
    return out


def owner(mod: str) -> str | None:
    """The layer of an importable name of ours (``spruce.perf.model`` -> ``spruce.perf``), None if not ours."""
    parts = mod.split(".")
    if parts[0] in ENTRY_SCRIPTS + ("benchmarks", "scripts"):
        return "entry:" + parts[0]
    if parts[0] != "spruce":
        return None
    if len(parts) == 1:
        return "spruce"
    top = "spruce." + parts[1]
    return top


def library_files(root: Path = ROOT) -> list[Path]:
    files = []
    for p in sorted((root / "spruce").rglob("*.py")):
        name = module_name(p, root)
        if p.name == "__main__.py" or name in ENTRY_MODULES:
            continue
        files.append(p)
    return files


def violations(root: Path = ROOT) -> list[str]:
    bad = []
    for p in library_files(root):
        me = module_name(p, root)
        layer = owner(me)
        if layer in LEAVES:
            allowed = {layer} if layer != "spruce" else set()
        elif layer in ALLOWED:
            allowed = ALLOWED[layer] | {layer, "spruce.io", "spruce"}
        else:
            allowed = set()  # a new top-level module of ours: a leaf until it is given a place in ALLOWED
        src = p.read_text()
        for line, mod in imports_of(p, root):
            to = owner(mod)
            if to is None or to in allowed:
                continue
            bad.append(f"{p.relative_to(root)}:{line}: {me} imports {mod} ({layer} may import "
                       f"{', '.join(sorted(allowed - {layer})) or 'nothing of ours'})")
        for word in RUN_BY_PATH:
            if word in src:
                bad.append(f"{p.relative_to(root)}: library code runs a file by path ({word})")
    return bad


def test_import_graph_is_one_way() -> None:
    bad = violations()
    assert not bad, "imports against the layering of docs/CONTRACTS.md:\n" + "\n".join(bad)


def test_checker_sees_relative_lazy_and_dynamic_imports(tmp_path) -> None:
    """The walk finds the imports a module-level grep would miss (in a copy of the layout, not the real tree)."""
    probe = tmp_path / "spruce" / "kernels" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text("import importlib\n"
                     "def f():\n"
                     "    from spruce.deploy import plan\n"
                     "    from ..study import study\n"
                     "    return importlib.import_module('spruce.perf.model')\n")
    assert {"spruce.deploy", "spruce.study", "spruce.perf.model"} <= {m for _, m in imports_of(probe, tmp_path)}
    bad = violations(tmp_path)
    assert len(bad) == 5 and all("spruce.kernels.probe imports" in b for b in bad), bad


@pytest.mark.parametrize("script", ["train.py", "export.py", "bench.py", "sweep.py"])
def test_entry_scripts_are_not_imported_by_the_library(script) -> None:
    name = script[:-3]
    for p in library_files():
        assert not any(owner(m) == f"entry:{name}" for _, m in imports_of(p)), p


def test_no_machine_paths_in_code_configs_or_tests() -> None:
    """Library, entry scripts, configs and tests name no folder of a particular machine (the DLMC sample is found
    by ``spruce.sparse.dlmc``; a system package's own install location such as Debian's fortunes is allowed)."""
    import re
    pattern = re.compile(r"""["'\s=(]/(work|home|root|mnt|srv|scratch|Users)/""")
    files = [*ROOT.glob("*.py"), *(ROOT / "spruce").rglob("*.py"), *(ROOT / "tests").rglob("*.py"),
             *(ROOT / "benchmarks").rglob("*.py"), *(ROOT / "conf").rglob("*.yaml"), *(ROOT / "scripts").glob("*")]
    bad = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in files if p.is_file() and p != Path(__file__)
           for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if pattern.search(line)]
    assert not bad, "machine paths:\n" + "\n".join(bad)
