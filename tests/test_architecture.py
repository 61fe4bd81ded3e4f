"""The package layering holds: the import-linter contracts in pyproject.toml are kept, and no
two modules of activeseg import each other, directly or through others (an import inside a
function counts: a lazy import is still a dependency, and often a hidden cycle)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp

import activeseg

ROOT = Path(__file__).resolve().parents[1]


def import_cycles(graph: grimp.ImportGraph) -> dict[frozenset[str], list[str]]:
    """Every cycle of the graph, found through each direct import ``a -> b`` for which ``b``
    leads back to ``a``: the shortest such loop, keyed by its set of modules."""
    cycles: dict[frozenset[str], list[str]] = {}
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back is not None:
                loop = [importer, *back]
                cycles.setdefault(frozenset(loop), loop)
    return cycles


def test_graph_is_of_this_checkout() -> None:
    # grimp finds the package as Python would import it: it must be the one under test.
    assert Path(activeseg.__file__).resolve().parent == ROOT / "activeseg"


def test_cycle_finder_reports_a_known_loop() -> None:
    graph = grimp.ImportGraph()
    for module in ("p.a", "p.b", "p.c", "p.d"):
        graph.add_module(module)
    graph.add_import(importer="p.a", imported="p.b")
    graph.add_import(importer="p.b", imported="p.c")
    graph.add_import(importer="p.c", imported="p.a")
    graph.add_import(importer="p.d", imported="p.a")
    assert import_cycles(graph) == {frozenset({"p.a", "p.b", "p.c"}): ["p.a", "p.b", "p.c", "p.a"]}


def test_no_import_cycles_within_activeseg() -> None:
    """Imports inside functions count; imports under ``if TYPE_CHECKING`` do not (they never
    run: a type annotation may name a module above)."""
    graph = grimp.build_graph("activeseg", cache_dir=None, exclude_type_checking_imports=True)
    cycles = [" -> ".join(loop) for loop in import_cycles(graph).values()]
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def lint_imports(*args: str) -> subprocess.CompletedProcess[str]:
    command = Path(sys.executable).with_name("lint-imports")
    assert command.exists(), f"{command} missing: install the dev extras"
    return subprocess.run(
        [str(command), "--no-cache", "--no-logo", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_import_linter_contracts_are_kept() -> None:
    """The layers and forbidden contracts of ``[tool.importlinter]`` (what `make lint` runs)."""
    done = lint_imports()
    assert done.returncode == 0, done.stdout + done.stderr


def test_import_linter_fails_on_an_upward_import(tmp_path: Path) -> None:
    # models imports uncertainty: with the two layers swapped, that import points upwards.
    config = tmp_path / "swapped.toml"
    config.write_text(
        '[tool.importlinter]\nroot_package = "activeseg"\n\n'
        "[[tool.importlinter.contracts]]\n"
        'name = "swapped"\ntype = "layers"\n'
        'layers = ["activeseg.uncertainty", "activeseg.models"]\n'
    )
    done = lint_imports("--config", str(config))
    assert done.returncode != 0
    assert "activeseg.models is not allowed to import activeseg.uncertainty" in done.stdout
