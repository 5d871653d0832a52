"""The package's shape, checked from its own imports (grimp: the graph import-linter builds; function-
level imports included): no import cycle anywhere, and the layers of docs/architecture point one way.
The finer contracts (who may import pyinfra, click, the Scaleway SDK, paramiko) are import-linter's,
in pyproject.toml, run by `lint-imports` in `make check` and `make test`."""

from __future__ import annotations

import grimp

# top to bottom: a module may import only modules of its own layer or below
LAYERS = [
    ["ensemble.cli"],
    ["ensemble.autoscale"],
    ["ensemble.lifecycle"],
    ["ensemble.fleet", "ensemble.frontdoor.commands", "ensemble.frontdoor.status"],
    ["ensemble.runner", "ensemble.worker", "ensemble.pyinfra_private", "ensemble.frontdoor.drain",
     "ensemble.frontdoor.control"],
    ["ensemble.components", "ensemble.pyinfra_entry"],
    ["ensemble.contexts"],
    ["ensemble.render", "ensemble.inventory", "ensemble.keyring", "ensemble.kept", "ensemble.frontdoor.refresh"],
    ["ensemble.hostfiles", "ensemble.frontdoor.render", "ensemble.frontdoor.occupancy", "ensemble.frontdoor.metrics"],
    ["ensemble.identity", "ensemble.fleetlock"],
    ["ensemble.providers", "ensemble.secrets", "ensemble.templating", "ensemble.turn", "ensemble.frontdoor.selection",
     "ensemble.frontdoor.rooms", "ensemble.standins"],
    ["ensemble.ssh"],
    ["ensemble.providers.base"],
    ["ensemble.publicports"],
    ["ensemble.spec", "ensemble.profiles", "ensemble.etherpad_source", "ensemble.cloudinit"],
    ["ensemble.userfiles", "ensemble.grammar", "ensemble.outtree", "ensemble.fleetca"],
    ["ensemble.errors", "ensemble.paths"],
]


def _graph():
    return grimp.build_graph("ensemble", include_external_packages=False)


def _layer_of(module: str) -> int | None:
    best = None
    for index, layer in enumerate(LAYERS):
        for prefix in layer:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (index, len(prefix))
    return best[0] if best else None


def test_no_import_cycle_in_the_package():
    graph = _graph()
    modules = sorted(m for m in graph.modules if m.startswith("ensemble"))
    cycles = set()
    for module in modules:
        for imported in graph.find_modules_directly_imported_by(module):
            chain = graph.find_shortest_chain(importer=imported, imported=module)
            if chain:
                cycles.add(" -> ".join((module, *chain)))
    assert not cycles, "\n".join(sorted(cycles))


def test_every_module_has_a_layer_and_imports_point_down():
    graph = _graph()
    upward = []
    for module in sorted(m for m in graph.modules if m.startswith("ensemble.")):
        mine = _layer_of(module)
        if mine is None and not graph.find_modules_directly_imported_by(module):
            continue  # a package's empty __init__
        assert mine is not None, f"{module}: not in LAYERS (tests/test_architecture.py)"
        for imported in graph.find_modules_directly_imported_by(module):
            theirs = _layer_of(imported)
            if theirs is not None and theirs < mine:
                upward.append(f"{module} -> {imported}")
    assert not upward, "imports pointing up:\n" + "\n".join(upward)
