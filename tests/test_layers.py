"""The layering of docs/architecture.md ("Layers"), checked on the import graph.

Every module under ``src/ddmr`` is parsed with :mod:`ast` (nothing is imported). Every
import statement is an edge, wherever it is: at module level, inside a function (a lazy
import is still a dependency: the function that runs it needs the module), and under
``if TYPE_CHECKING:`` (a type is a dependency of the design too). ``from . import x`` and
``from .. import y`` are resolved; ``from package import name`` is an edge to the
submodule ``package.name`` when there is one; a name a package serves lazily through its
``__getattr__`` (``ddmr.register``, ``ddmr.losses.NCCLoss``, ``ddmr.data.sample_cohort``)
is an edge to the module that serves it, and the imports inside that ``__getattr__`` are
not edges of the package itself. ``importlib.import_module`` with a constant name is an
edge; with a name built at run time (``f"ddmr.commands.{name}"``), an edge to every module
under the constant prefix. Edges within a layer (a package, or a top-level module) are
checked for cycles only.

Failures name each offending edge with the file and line of its import.
"""

from __future__ import annotations

import ast
import itertools
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "ddmr"

# -- the rules ------------------------------------------------------------------------------
# A module's layer is its package under ddmr (``ddmr.spatial.grid`` -> ``spatial``) or, for a
# top-level module, its own name (``ddmr.metrics`` -> ``metrics``); ``ddmr`` itself is
# ``ddmr``. Groups of layers, from the top:

#: the command line: only ``cli``/``__main__``/``commands`` import it; the library never does
ENTRY = frozenset({"commands", "cli", "__main__"})
#: whole-pipeline front ends that only the command line imports (``ddmr demo``, Nipype)
FRONT_ENDS = frozenset({"demo", "interfaces"})
#: training, its datasets and its on-the-fly augmentation
TRAINING = frozenset({"train", "data", "augment"})
#: evaluation: stored pairs and the runner, baselines, statistics, reports
EVALUATION = frozenset({"evaluate", "baselines", "stats", "report"})
#: the networks and model files
MODELS = frozenset({"model", "nn"})

#: the base: a layer here imports only the layers listed (and itself)
ALLOWED: dict[str, frozenset[str]] = {
    "ddmr": frozenset({"errors"}),  # its lazy ``ddmr.register`` is not its own edge
    "errors": frozenset(),
    "designs": frozenset({"errors"}),  # the loss designs
    # the old name of ``designs``, a deprecated alias for one release (issue 31)
    "config": frozenset({"designs", "deprecated"}),
    "deprecated": frozenset(),  # old spellings that still work, with a warning
    "threads": frozenset({"errors"}),
    "clock": frozenset(),
    "memory": frozenset({"errors"}),
    "optim": frozenset(),
}

#: layer (or one module, by its dotted name) -> the layers it may not import. A module obeys
#: its layer's row and its own. ``commands``, ``cli`` and ``__main__`` may import anything.
FORBIDDEN: dict[str, frozenset[str]] = {
    # grids, fields, resampling and files know nothing of models or registration
    "spatial": (frozenset({"io", "prepare", "losses", "metrics", "overlay", "registration"})
                | MODELS | TRAINING | EVALUATION | FRONT_ENDS | ENTRY),
    "io": (frozenset({"prepare", "losses", "metrics", "registration"})
           | MODELS | TRAINING | EVALUATION | FRONT_ENDS | ENTRY),
    # the preparation recipe and ``ddmr prepare``: dataset layouts (``data``) are the
    # dataset's (prepare/dataset.py), never the recipe's (below)
    "prepare": (frozenset({"registration", "losses", "metrics", "train", "augment"})
                | MODELS | EVALUATION | FRONT_ENDS | ENTRY),
    "ddmr.prepare.recipe": frozenset({"data"}),
    # the per-pair metrics: below registration, evaluation and reports
    "metrics": (frozenset({"io", "prepare", "overlay", "registration"})
                | MODELS | TRAINING | EVALUATION | FRONT_ENDS | ENTRY),
    "losses": (frozenset({"registration", "metrics", "prepare"})
               | MODELS | TRAINING | EVALUATION | FRONT_ENDS | ENTRY),
    "nn": (frozenset({"registration", "metrics", "prepare", "losses"})
           | TRAINING | EVALUATION | FRONT_ENDS | ENTRY),
    "overlay": (frozenset({"registration", "metrics"})
                | MODELS | TRAINING | EVALUATION | FRONT_ENDS | ENTRY),
    # model files and cards are checked without training code
    "model": frozenset({"registration"}) | TRAINING | EVALUATION | FRONT_ENDS | ENTRY,
    # registration: nothing of training, datasets, augmentation or evaluation
    "registration": TRAINING | EVALUATION | FRONT_ENDS | ENTRY,
    "augment": (frozenset({"registration", "train"})
                | EVALUATION | FRONT_ENDS | ENTRY),
    "data": frozenset({"registration", "train"}) | EVALUATION | FRONT_ENDS | ENTRY,
    "baselines": (frozenset({"registration"}) | TRAINING | (EVALUATION - {"baselines"})
                  | FRONT_ENDS | ENTRY),
    # training may call registration (never the other way round): the engine's fields are
    # its amortised targets, and a model's card states its training images' foreground by
    # the same definition that registration checks input against (issue 30)
    "train": EVALUATION | FRONT_ENDS | ENTRY,
    "evaluate": frozenset({"train", "report", "stats"}) | FRONT_ENDS | ENTRY,
    "stats": (frozenset({"registration", "evaluate", "report"})
              | MODELS | TRAINING | FRONT_ENDS | ENTRY),
    "report": FRONT_ENDS | ENTRY,
    "demo": frozenset({"interfaces"}) | ENTRY,
    "interfaces": frozenset({"demo"}) | ENTRY,
}

#: edges that were cut (issue 31); the rules above forbid them too, this names them
CUT = [
    ("ddmr.registration", "ddmr.evaluate"),  # the metrics moved to ddmr.metrics
    ("ddmr.prepare.recipe", "ddmr.data"),  # dataset options: prepare.dataset.check_options
    ("ddmr.model", "ddmr.train"),  # fine-tuning passes TrainingProfile.from_dict in
    # import cycles, broken where the shared piece belongs:
    ("ddmr.evaluate.inter", "ddmr.evaluate.pairs"),  # the format: evaluate/pair_files.py
    ("ddmr.train.resume", "ddmr.train.run"),  # RunOptions lives in resume.py
    ("ddmr.threads", "ddmr.spatial"),  # use_threads sets numba's pool itself
    ("ddmr.spatial.grid", "ddmr.spatial.warp"),  # affine_volume lives in grid.py
    ("ddmr.spatial.kernels", "ddmr.spatial.filters"),  # gaussian_taps lives in kernels.py
    ("ddmr.io", "ddmr.registration"),  # residual_of lives in spatial/field.py
]

#: what ``ddmr register`` may never import: with every function-level import counted, no
#: code path of the command reaches these. tests/test_register.py checks, in a fresh
#: process, the modules one default registration really imports: the same, and
#: ``ddmr.losses.ssim`` too (here a code path reaches it: ``ddmr.metrics.ssim``, a metric
#: registration does not compute)
REGISTER_NEVER = ("ddmr.train", "ddmr.data", "ddmr.augment", "ddmr.evaluate",
                  "ddmr.baselines", "ddmr.report", "ddmr.stats", "ddmr.demo",
                  "ddmr.interfaces", "ddmr.losses.dice")


# -- the graph ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    file: str  # relative to the folder above src/
    line: int
    kind: str  # "module", "function" or "typing"

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.source} -> {self.target} ({self.kind}-level)"


class ImportGraph:
    """The imports of the package ``root`` under the folder ``src`` (module docstring)."""

    def __init__(self, src: Path, root: str = ROOT) -> None:
        self.src, self.root = src, root
        self.modules = {self._name(p): p for p in sorted((src / root).rglob("*.py"))}
        assert self.modules, f"no modules under {src / root}"
        self._trees: dict[str, ast.Module] = {}
        self._lazy: dict[str, dict[str, str]] = {}
        self.edges = [edge for module in self.modules for edge in self.edges_of(module)]
        self.by_source: dict[str, list[Edge]] = {}
        for edge in self.edges:
            self.by_source.setdefault(edge.source, []).append(edge)

    def _name(self, path: Path) -> str:
        parts = list(path.relative_to(self.src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        return ".".join(parts)

    def tree(self, module: str) -> ast.Module:
        if module not in self._trees:
            path = self.modules[module]
            self._trees[module] = ast.parse(path.read_text(), str(path))
        return self._trees[module]

    def existing(self, name: str) -> str:
        """The deepest module that importing ``name`` (a module or a name in one) loads."""
        while name not in self.modules and "." in name:
            name = name.rpartition(".")[0]
        return name

    def package_of(self, module: str) -> str:
        return (module if self.modules[module].name == "__init__.py"
                else module.rpartition(".")[0])

    def resolve_from(self, package: str, node: ast.ImportFrom) -> str:
        """The module a ``from ... import`` names, relative ones resolved."""
        if not node.level:
            return node.module or ""
        base = package.split(".")
        base = base[: len(base) - (node.level - 1)]
        return ".".join(base + ([node.module] if node.module else []))

    def lazy_getattr(self, module: str) -> ast.FunctionDef | None:
        return next((node for node in self.tree(module).body
                     if isinstance(node, ast.FunctionDef) and node.name == "__getattr__"), None)

    def lazy_names(self, package: str) -> dict[str, str]:
        """Names a package serves through its module-level ``__getattr__`` -> the module
        that defines each: ``from X import NAME`` inside it, and the entries of a
        module-level ``{"NAME": "submodule"}`` table that it reads."""
        if package in self._lazy:
            return self._lazy[package]
        served: dict[str, str] = {}
        getattr_node = self.lazy_getattr(package) if package in self.modules else None
        if getattr_node is not None:
            for node in ast.walk(getattr_node):
                if isinstance(node, ast.ImportFrom):
                    base = self.resolve_from(package, node)
                    for alias in node.names:
                        served[alias.asname or alias.name] = self.existing(
                            f"{base}.{alias.name}")
            read = {n.id for n in ast.walk(getattr_node) if isinstance(n, ast.Name)}
            for node in self.tree(package).body:
                target, value = None, None
                if isinstance(node, ast.Assign) and len(node.targets) == 1:
                    target, value = node.targets[0], node.value
                elif isinstance(node, ast.AnnAssign):
                    target, value = node.target, node.value
                if not (isinstance(target, ast.Name) and target.id in read
                        and isinstance(value, ast.Dict)):
                    continue
                for key, sub in zip(value.keys, value.values, strict=True):
                    if (isinstance(key, ast.Constant) and isinstance(sub, ast.Constant)
                            and f"{package}.{sub.value}" in self.modules):
                        served[str(key.value)] = f"{package}.{sub.value}"
        self._lazy[package] = served
        return served

    def from_target(self, base: str, name: str) -> str:
        """What ``from base import name`` loads: the submodule, the module serving a lazy
        name, or ``base``."""
        if f"{base}.{name}" in self.modules:
            return f"{base}.{name}"
        return self.lazy_names(base).get(name) or self.existing(base)

    def dynamic_targets(self, call: ast.Call, where: str) -> list[str] | None:
        """The modules ``importlib.import_module(...)`` (or ``__import__``) may load: a
        constant name, or every module under the constant prefix of an f-string; None for
        any other call."""
        func = call.func
        named = ((isinstance(func, ast.Attribute) and func.attr == "import_module")
                 or (isinstance(func, ast.Name) and func.id in ("import_module", "__import__")))
        if not named or not call.args:
            return None
        arg = call.args[0]
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            return [self.existing(arg.value)]
        prefix = (str(arg.values[0].value) if isinstance(arg, ast.JoinedStr) and arg.values
                  and isinstance(arg.values[0], ast.Constant) else "")
        if prefix.startswith(self.root + ".") and prefix.endswith("."):
            return [m for m in self.modules if m.startswith(prefix)]
        if prefix and not prefix.startswith(self.root) and not self.root.startswith(prefix):
            return []  # another package's module
        raise AssertionError(f"{where}:{call.lineno}: an import this test cannot follow (a "
                             f"name built at run time); give it a constant '{self.root}."
                             "package.' prefix")

    def edges_of(self, module: str) -> list[Edge]:
        path = self.modules[module]
        where = path.relative_to(self.src.parent).as_posix()
        package = self.package_of(module)
        getattr_node = self.lazy_getattr(module) if package == module else None
        found: list[Edge] = []

        def add(target: str, node: ast.AST, kind: str) -> None:
            if target == self.root or target.startswith(self.root + "."):
                found.append(Edge(module, target, where, node.lineno, kind))

        def visit(node: ast.AST, kind: str) -> None:
            if node is getattr_node:
                return  # its names are edges of those who import them (lazy_names)
            if isinstance(node, ast.Import):
                for alias in node.names:
                    add(self.existing(alias.name), node, kind)
            elif isinstance(node, ast.ImportFrom):
                base = self.resolve_from(package, node)
                for alias in node.names:
                    add(self.existing(base) if alias.name == "*"
                        else self.from_target(base, alias.name), node, kind)
            elif isinstance(node, ast.Call):
                for target in self.dynamic_targets(node, where) or ():
                    add(target, node, kind)
            if isinstance(node, ast.If) and (
                    (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
                    or (isinstance(node.test, ast.Attribute)
                        and node.test.attr == "TYPE_CHECKING")):
                for child in node.body:
                    visit(child, "typing")
                for child in node.orelse:
                    visit(child, kind)
                return
            inner = ("function" if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef
                                              | ast.Lambda) else kind)
            for child in ast.iter_child_nodes(node):
                visit(child, inner)

        visit(self.tree(module), "module")
        return found

    def reach(self, starts: Iterable[str], kinds: set[str]) -> dict[str, Edge | None]:
        """Every module that importing ``starts`` may load through edges of ``kinds`` (and
        the packages above each), with the edge that first reached it."""
        reached: dict[str, Edge | None] = {}
        todo: list[tuple[str, Edge | None]] = [(s, None) for s in starts]
        while todo:
            module, via = todo.pop()
            if module in reached:
                continue
            reached[module] = via
            if "." in module:
                todo.append((module.rpartition(".")[0], via))
            todo.extend((e.target, e) for e in self.by_source.get(module, ())
                        if e.kind in kinds)
        return reached

    def cycle(self) -> list[Edge] | None:
        """The edges of one import cycle, or None (an import of a module's own package does
        not count: Python imports the package first anyway)."""
        out: dict[str, dict[str, Edge]] = {}
        for edge in self.edges:
            if not _within(edge.source, edge.target):
                out.setdefault(edge.source, {}).setdefault(edge.target, edge)
        state: dict[str, int] = {}  # 1: on the path, 2: done
        path: list[Edge] = []

        def walk(node: str) -> list[Edge] | None:
            state[node] = 1
            for target, edge in sorted(out.get(node, {}).items()):
                if state.get(target) == 1:  # on the path: the cycle is the path from it
                    sources = [e.source for e in path]
                    return [*path[sources.index(target):], edge]
                if target not in state:
                    path.append(edge)
                    if (found := walk(target)) is not None:
                        return found
                    path.pop()
            state[node] = 2
            return None

        sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(self.modules) + 100))
        for start in sorted(out):
            if start not in state and (found := walk(start)) is not None:
                return found
        return None


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _listing(edges: Iterable[Edge]) -> str:
    return "\n".join(f"  {edge}" for edge in edges)


@cache
def graph() -> ImportGraph:
    return ImportGraph(SRC)


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


# -- the tests ------------------------------------------------------------------------------

def _write(root: Path, files: dict[str, str]) -> ImportGraph:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return ImportGraph(root / "src", "pkg")


def test_the_graph_sees_every_kind_of_import(tmp_path):
    """The parser, on a small package: every kind of import is an edge of its kind, at
    its line; a lazy package name is an edge to the module serving it."""
    found = _write(tmp_path, {
        "src/pkg/__init__.py": "def __getattr__(name):\n    from pkg.b.c import late\n"
                               "    return late\n",
        "src/pkg/b/__init__.py": "import importlib\n_LAZY = {'Thing': 'd'}\n"
                                 "def __getattr__(name):\n"
                                 "    return importlib.import_module(f'pkg.b.{_LAZY[name]}')\n",
        "src/pkg/b/c.py": "from . import d\nfrom .. import a\nfrom pkg.b import Thing\n",
        "src/pkg/b/d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                          "    from pkg.a import A\n",
        "src/pkg/a.py": "import os\n\ndef f():\n    import pkg.b.c\n"
                        "    from pkg import late\n",
        "src/pkg/cli.py": "import importlib\n\ndef main(name):\n"
                          "    importlib.import_module(f'pkg.b.{name}')\n",
    })
    edges = {(e.source, e.target, e.line, e.kind) for e in found.edges}
    assert edges == {
        ("pkg.b.c", "pkg.b.d", 1, "module"), ("pkg.b.c", "pkg.a", 2, "module"),
        ("pkg.b.c", "pkg.b.d", 3, "module"), ("pkg.b.d", "pkg.a", 3, "typing"),
        ("pkg.a", "pkg.b.c", 4, "function"), ("pkg.a", "pkg.b.c", 5, "function"),
        ("pkg.cli", "pkg.b.c", 4, "function"), ("pkg.cli", "pkg.b.d", 4, "function"),
    }
    assert [str(e) for e in found.edges if e.source == "pkg.b.d"] == [
        "src/pkg/b/d.py:3: pkg.b.d -> pkg.a (typing-level)"]
    cycle = found.cycle()
    assert cycle is not None and {(e.source, e.target) for e in cycle} <= {
        ("pkg.a", "pkg.b.c"), ("pkg.b.c", "pkg.a"), ("pkg.b.c", "pkg.b.d"),
        ("pkg.b.d", "pkg.a")}
    assert cycle[0].source == cycle[-1].target
    assert all(a.target == b.source for a, b in itertools.pairwise(cycle))


def test_the_graph_refuses_an_import_it_cannot_follow(tmp_path):
    (tmp_path / "src" / "pkg").mkdir(parents=True)
    (tmp_path / "src" / "pkg" / "__init__.py").write_text(
        "import importlib\n\ndef f(name):\n    return importlib.import_module(name)\n")
    with pytest.raises(AssertionError, match=r"__init__\.py:4: an import this test cannot"):
        ImportGraph(tmp_path / "src", "pkg")


def test_every_layer_has_a_rule():
    """A new package or top-level module needs a row in FORBIDDEN or ALLOWED (or is the
    command line); the rules name only layers and modules that exist."""
    layers = {layer(m) for m in graph().modules}
    missing = sorted(layers - set(FORBIDDEN) - set(ALLOWED) - ENTRY)
    assert not missing, f"layers without a rule in tests/test_layers.py: {missing}"
    named = {x for table in (FORBIDDEN, ALLOWED) for row in table.values() for x in row}
    assert not named - layers, f"rules name layers that do not exist: {named - layers}"
    modules = [key for key in FORBIDDEN if "." in key and key not in graph().modules]
    assert not modules, f"FORBIDDEN names modules that do not exist: {modules}"


def _denied(module: str) -> set[str]:
    """The layers ``module`` may not import: its layer's row and its own in FORBIDDEN, and
    every layer that ALLOWED does not list for its layer."""
    denied = set(FORBIDDEN.get(layer(module), ())) | set(FORBIDDEN.get(module, ()))
    if layer(module) in ALLOWED:
        denied |= {layer(m) for m in graph().modules} - ALLOWED[layer(module)]
    denied.discard(layer(module))
    return denied


def test_the_library_keeps_to_its_layers():
    bad = [edge for edge in graph().edges if layer(edge.target) in _denied(edge.source)]
    assert not bad, ("imports that break the layers of docs/architecture.md (the rules: "
                     "FORBIDDEN and ALLOWED in tests/test_layers.py):\n" + _listing(bad))


def test_the_library_never_imports_the_command_line():
    bad = [edge for edge in graph().edges
           if layer(edge.source) not in ENTRY and layer(edge.target) in ENTRY]
    assert not bad, "the library imports the command line:\n" + _listing(bad)


def test_no_import_cycles():
    cycle = graph().cycle()
    assert cycle is None, "an import cycle (imports of every kind count):\n" + _listing(cycle)


@pytest.mark.parametrize(("source", "target"), CUT)
def test_a_cut_edge_stays_cut(source, target):
    bad = [edge for edge in graph().edges
           if _within(edge.source, source) and _within(edge.target, target)]
    assert not bad, f"{source} imports {target} again:\n" + _listing(bad)


def test_the_metrics_have_one_home():
    assert "ddmr.metrics" in graph().modules
    assert "ddmr.evaluate.metrics" not in graph().modules, "no shim: import ddmr.metrics"


def test_ddmr_register_imports_no_training_datasets_augmentation_or_evaluation():
    """``ddmr register``: the command line (every command module is imported to build the
    parser, at module level only), then everything ``commands/register.py`` imports, by
    any import at any depth."""
    commands = [m for m in graph().modules if _within(m, "ddmr.commands")]
    parser = graph().reach(["ddmr.cli", *commands], {"module"})
    run = graph().reach(["ddmr.commands.register"], {"module", "function", "typing"})
    assert {"ddmr.registration.pipeline", "ddmr.registration.engine", "ddmr.metrics"} <= set(run)
    for reached in (parser, run):
        bad = sorted(m for m in reached if m.startswith(REGISTER_NEVER))
        chains = []
        for module in bad[:5]:
            chain, edge = [], reached[module]
            while edge is not None and len(chain) < 30:
                chain.append(edge)
                edge = reached.get(edge.source)
            chains.append(f"{module}, through:\n" + _listing(reversed(chain)))
        assert not bad, "ddmr register can import " + "\n".join(chains)
