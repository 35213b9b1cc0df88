"""tfgen's modules in layers: no import circle, and no import from a lower layer up to a higher one.

The layers, from the bottom up; a module imports from its own layer and the layers below it,
never from one above (the flow ``TOML -> Config -> assembled components -> run``):

1. ground floor -- ``errors``, ``schema`` (``setting``, ``Component``, ``Empty``,
   ``TaskConfig``), ``registry``, ``capability`` (the mechanism of components' capabilities),
   ``compose`` (reading config files, ``extends``):
   they import nothing of tfgen's above them, so every module may use them;
2. config -- the typed config, parsed against the registries it is given (it is data);
3. data and the machine -- ``data/``, ``memory``, ``footprint`` (the terms components declare
   their memory in), ``runtime``, ``distribute``, ``execution``, ``signals``, ``storage``,
   ``figures`` (image grids and plots, written as files);
4. models -- priors, networks, likelihoods and their capabilities, the generative model;
5. inference -- the capabilities, the schemes and what they share;
6. evaluation -- tasks, metrics, figures, samplers;
7. geometry -- the decoder's latent geometry and its tasks (on evaluation's task context);
8. resources -- the memory estimate (it traces models and schemes);
9. assemble -- the composition root: it imports every component and builds a run's pieces;
   plugins -- the user's components, loaded after the built-in ones;
10. run -- ``checkpoints``, ``training``, ``runner``, ``rundir``, ``runlock``;
11. api -- the public Python API (``tfgen/__init__.py`` offers it lazily, ``api``),
    ``export`` (a run as a SavedModel) and ``sweep`` (studies of runs on Optuna; its
    ``[sweep]`` table is read by ``sweep_spec``, beside config);
12. cli.

Every import counts, those inside functions too: a lazy import hides a circle, it does not
remove it.  Every module of tfgen must be in :data:`LAYERS` (a new module is placed there).
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "tfgen"

#: (layer, its modules), from the bottom up
LAYERS = [
    ("ground floor", "tfgen.errors tfgen.schema tfgen.registry tfgen.compose tfgen.capability"),
    ("config", "tfgen.config tfgen.sweep_spec"),
    ("data and the machine",
     "tfgen.data tfgen.data.bundle tfgen.data.checks tfgen.data.idx tfgen.data.image_folder "
     "tfgen.data.loader tfgen.data.npz tfgen.data.splits tfgen.data.tfds tfgen.data.transforms "
     "tfgen.memory tfgen.footprint tfgen.runtime tfgen.distribute tfgen.execution "
     "tfgen.signals tfgen.storage tfgen.figures"),
    ("models",
     "tfgen.models tfgen.models.gmm tfgen.models.kmeans tfgen.models.layer_list "
     "tfgen.models.likelihood_capabilities tfgen.models.likelihoods tfgen.models.linear_em "
     "tfgen.models.model tfgen.models.networks tfgen.models.pixelcnn tfgen.models.ppca "
     "tfgen.models.priors"),
    ("inference",
     "tfgen.inference tfgen.inference.abp tfgen.inference.short_run tfgen.inference.langevin_chains tfgen.inference.adversarial tfgen.inference.adversarial_losses "
     "tfgen.inference.autoregressive tfgen.inference.base tfgen.inference.capabilities "
     "tfgen.inference.elbo tfgen.inference.em tfgen.inference.estimators "
     "tfgen.inference.fitting tfgen.inference.flow tfgen.inference.grids "
     "tfgen.inference.kernels tfgen.inference.latents tfgen.inference.map_latents "
     "tfgen.inference.per_datapoint tfgen.inference.pga tfgen.inference.proposals "
     "tfgen.inference.samplers tfgen.inference.step_sizes tfgen.inference.svi tfgen.inference.vae"),
    ("evaluation",
     "tfgen.evaluation tfgen.evaluation.ais tfgen.evaluation.classifier "
     "tfgen.evaluation.completion tfgen.evaluation.distances "
     "tfgen.evaluation.inception tfgen.evaluation.inception_worker "
     "tfgen.evaluation.interpolation tfgen.evaluation.latent_selection "
     "tfgen.evaluation.latent_space tfgen.evaluation.metrics tfgen.evaluation.quality "
     "tfgen.evaluation.tasks"),
    ("geometry",
     "tfgen.geometry tfgen.geometry.clustering tfgen.geometry.curves tfgen.geometry.geodesics "
     "tfgen.geometry.metric tfgen.geometry.precision "
     "tfgen.geometry.random_walk tfgen.geometry.tasks tfgen.geometry.tasks.common "
     "tfgen.geometry.tasks.geodesic_kmeans tfgen.geometry.tasks.geodesics "
     "tfgen.geometry.tasks.metric_map tfgen.geometry.tasks.random_walk "
     "tfgen.geometry.tasks.rbf_precision"),
    ("resources", "tfgen.resources"),
    ("assemble", "tfgen.assemble tfgen.plugins"),
    ("run", "tfgen.checkpoints tfgen.training tfgen.training.state tfgen.training.loop "
            "tfgen.training.callbacks tfgen.training.progress tfgen.runner tfgen.rundir tfgen.runlock"),
    ("api", "tfgen tfgen.api tfgen.export tfgen.compare tfgen.sweep"),  # tfgen/__init__.py: the public API, lazily
    ("cli", "tfgen.cli tfgen.__main__"),
]


def layer_of() -> dict[str, int]:
    return {module: i for i, (_, modules) in enumerate(LAYERS) for module in modules.split()}


def modules_of(package_dir: Path) -> dict[str, Path]:
    """{dotted module name: file} of every module of the package in ``package_dir``."""
    out = {}
    for path in package_dir.rglob("*.py"):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """{module: the package's modules it imports}, every ``import`` in it counted (in
    functions too); ``from p import name`` is an import of ``p.name`` where that is a
    module, else of ``p``."""
    modules = modules_of(package_dir)
    package = package_dir.name

    def module_of(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in modules.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {module_of(a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package ``level - 1`` above this one
                    anchor = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                imported |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules
                             else module_of(base) for a in node.names}
        graph[name] = {m for m in imported
                       if m and m != name and (m == package or m.startswith(package + "."))}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The graph's strongly connected components of more than one module (Tarjan 1972)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def upward(graph: dict[str, set[str]], layers: dict[str, int]) -> set[tuple[str, str]]:
    """(importer, imported) for every import from a lower layer up to a higher one."""
    return {(m, t) for m, targets in graph.items() for t in targets
            if m in layers and t in layers and layers[t] > layers[m]}


def test_every_module_has_a_layer():
    known, present = set(layer_of()), set(modules_of(ROOT))
    assert not present - known, (f"modules in no layer: {sorted(present - known)}; place each "
                                 f"in LAYERS in tests/test_layers.py")
    assert not known - present, (f"LAYERS lists modules that do not exist: "
                                 f"{sorted(known - present)}; remove them")


def test_no_import_circle():
    found = circles(import_graph(ROOT))
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_no_import_from_a_lower_layer_to_a_higher_one():
    layers = layer_of()
    names = [name for name, _ in LAYERS]
    found = sorted(upward(import_graph(ROOT), layers))
    assert not found, "upward imports: " + "; ".join(
        f"{m} ({names[layers[m]]}) imports {t} ({names[layers[t]]})" for m, t in found)


def test_the_checks_find_a_circle_and_an_upward_import(tmp_path):
    """On a package of three modules: a circle through an import inside a function, and an
    upward import through a relative one."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "low.py").write_text("import pkg.middle\n")
    (package / "middle.py").write_text("def f():\n    from pkg import low\n")
    (package / "high.py").write_text("")
    (package / "sub").mkdir()
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "deep.py").write_text("from .. import high\nfrom ..low import x\n"
                                             "import os\n")
    graph = import_graph(package)
    assert graph["pkg.sub.deep"] == {"pkg.high", "pkg.low"}
    assert circles(graph) == [["pkg.low", "pkg.middle"]]
    layers = {"pkg": 0, "pkg.low": 0, "pkg.middle": 0, "pkg.sub": 0, "pkg.sub.deep": 0,
              "pkg.high": 1}
    assert upward(graph, layers) == {("pkg.sub.deep", "pkg.high")}
