"""The package's shape: no module imports one that imports it back, and the layers only point
down (data below models, below the config schema, below training and inference, below the
analysis, below the commands). Read from the source with ``ast``: every import counts, also
one inside a function."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "celeba_gender"
# Lowest first. A module may import its own group and the groups below it; training and
# inference, side by side, do not import each other.
LAYERS: list[set[str]] = [
    {
        "celeba_gender",
        "config",
        "progress",
        "ranks",
        "spreadsheet",
        "quiet_interrupt",
        "library_internals",
        "metrics",
        "stop_signals",
        "startup",
    },
    {"data"},
    {"models"},
    {"config_schema"},
    {"training", "inference"},
    {"analysis"},
    {"train", "eval", "predict", "demo", "demo_files"},
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Each module of the package: the package's modules it imports (anywhere in its code)."""
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # "from celeba_gender.analysis import tables" imports the module tables (its
                # package is the one being loaded); a name imports the module defining it.
                targets = [
                    f"{node.module}.{alias.name}"
                    if f"{node.module}.{alias.name}" in modules
                    else node.module
                    for alias in node.names
                ]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
        graph.setdefault(name, set())
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _group(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _layer(module: str) -> int:
    group = _group(module)
    return next(number for number, layer in enumerate(LAYERS) if group in layer)


def test_no_module_imports_one_that_imports_it_back():
    graph = import_graph()
    assert len(graph) > 50  # the whole package was read
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_layers_only_point_down():
    graph = import_graph()
    unknown = sorted({_group(m) for m in graph} - set().union(*LAYERS))
    assert unknown == [], "new top-level modules: place them in LAYERS"
    upward = [
        f"{module} -> {target}"
        for module, targets in graph.items()
        for target in targets
        if _layer(target) > _layer(module)
        or (_layer(target) == _layer(module) and _group(target) != _group(module)
            and _layer(module) == LAYERS.index({"training", "inference"}))
    ]  # fmt: skip
    assert upward == []


def test_importing_the_package_does_no_work():
    """Registration happens when a command starts: importing every module (the commands' too)
    leaves OmegaConf's resolvers, the environment, warning filters, loggers, the garbage
    collector, the Ctrl-C handler and the exception hooks as they were."""
    import subprocess
    import sys

    modules = sorted(import_graph())
    probe = (
        "import gc, importlib.util, logging, os, signal, sys, warnings\n"
        "from omegaconf import OmegaConf\n"
        # As at a terminal (a shell running the tests in the background ignores Ctrl-C).
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "hooks = (sys.excepthook, sys.unraisablehook)\n"
        # Third-party libraries set their own variables when imported: theirs, not ours.
        "for library in ('torch', 'torchvision', 'lightning', 'cv2', 'facenet_pytorch', 'av'):\n"
        "    if importlib.util.find_spec(library):\n"
        "        __import__(library)\n"
        "environ, filters = dict(os.environ), list(warnings.filters)\n"
        "loggers = {n: list(l.filters) for n, l in logging.root.manager.loggerDict.items()\n"
        "           if isinstance(l, logging.Logger)}\n"
        f"for name in {modules!r}:\n"
        "    __import__(name)\n"
        "assert not OmegaConf.has_resolver('project_root'), 'resolvers registered'\n"
        "assert gc.isenabled() and gc.get_freeze_count() == 0, 'garbage collection changed'\n"
        "assert dict(os.environ) == environ, set(os.environ.items()) ^ set(environ.items())\n"
        "assert list(warnings.filters) == filters, 'warning filters added'\n"
        "added = {n: l.filters for n, l in logging.root.manager.loggerDict.items()\n"
        "         if isinstance(l, logging.Logger) and l.filters and l.filters != loggers.get(n)\n"
        "         and n.startswith('celeba_gender')}\n"
        "assert not added, added\n"
        "assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, 'Ctrl-C taken'\n"
        "assert (sys.excepthook, sys.unraisablehook) == hooks, 'exception hooks replaced'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]


# Each command's main function, and the launcher's job (a process of its own).
ENTRY_POINTS = {
    "train.py": "main",
    "eval.py": "main",
    "predict.py": "main",
    "demo.py": "main",
    "analysis/__main__.py": "main",
    "training/launchers.py": "__call__",
}


def test_every_command_starts_with_start_command():
    """startup.start_command first (resolvers; import-time objects kept out of the garbage
    collector's passes, which walked them all: a fifth of a smoke run)."""
    late = []
    for file, function in ENTRY_POINTS.items():
        tree = ast.parse((PACKAGE / file).read_text())
        (body,) = [
            node.body
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef) and node.name == function
        ]
        calls = [
            node.value.func.id
            for node in body
            if isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Call)
            and isinstance(node.value.func, ast.Name)
        ]
        if not calls or calls[0] != "start_command":
            late.append(f"{file}:{function}")
    assert late == []


# Where a library's private names may be used: the door (library_internals.py, which checks
# each against the installed version) and the DDP launcher subclassing Lightning's private one.
DOORS = {"library_internals.py", "training/ddp.py"}
# Names with one leading underscore that their library documents as public.
PUBLIC_UNDERSCORE_NAMES = {
    "_exit": "os._exit, the standard library's exit without clean-up",
    "_target_": "Hydra's config key naming what a node instantiates",
}


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _own_import(node: ast.Import | ast.ImportFrom) -> bool:
    """An import of the package itself (absolute or relative)."""
    if isinstance(node, ast.ImportFrom):
        return node.level > 0 or (node.module or "").split(".")[0] == "celeba_gender"
    return all(alias.name.split(".")[0] == "celeba_gender" for alias in node.names)


def private_names(tree: ast.AST) -> tuple[set[str], list[tuple[int, str]]]:
    """The underscore names a module defines (functions, classes, variables, parameters,
    imports, its own ``self._x``/``cls._x`` attributes) and the ``(line, name)`` of each
    ``x._name`` it reads or writes on something else (``getattr(x, "_name")`` too)."""
    defined: set[str] = set()
    used: list[tuple[int, str]] = []
    foreign: set[int] = set()  # the aliases of another library's private imports
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            defined.add(node.name)
        elif isinstance(node, ast.arg):
            defined.add(node.arg)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            defined.add(node.id)  # module, class body (dataclass fields), local, loop targets
        elif isinstance(node, ast.alias):
            if id(node) not in foreign:
                defined.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.Import | ast.ImportFrom) and not _own_import(node):
            # Another library's private module or name, imported: used here (not defined).
            module = getattr(node, "module", None) or ""
            for alias in node.names:
                path = f"{module}.{alias.name}" if module else alias.name
                private = [part for part in path.split(".") if _is_private(part)]
                used += [(node.lineno, part) for part in private]
                if private:
                    foreign.add(id(alias))
        elif isinstance(node, ast.Global | ast.Nonlocal):
            defined.update(node.names)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            defined.add(node.name)
        elif isinstance(node, ast.Attribute):
            own = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
            if own and isinstance(node.ctx, ast.Store):
                defined.add(node.attr)
            elif _is_private(node.attr):
                used.append((node.lineno, node.attr))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
        ):
            target, name = node.args[0], node.args[1].value
            if node.func.id == "setattr" and isinstance(target, ast.Name) and target.id == "self":
                defined.add(name)
            elif _is_private(name):
                used.append((node.lineno, name))
    return defined, used


def foreign_private_uses(sources: dict[str, str]) -> list[str]:
    """``file:line: ._name`` for each underscore name the modules (file -> source) use that none
    of them defines: another library's private name."""
    defined: set[str] = set()
    uses: list[tuple[str, int, str]] = []
    for file, source in sources.items():
        names, used = private_names(ast.parse(source, file))
        defined |= names
        uses += [(file, line, name) for line, name in used]
    return [
        f"{file}:{line}: .{name}"
        for file, line, name in sorted(uses)
        if name not in defined and name not in PUBLIC_UNDERSCORE_NAMES
    ]  # fmt: skip


def test_other_libraries_private_names_are_used_only_in_library_internals():
    """A private name of Lightning, Hydra, submitit, TensorBoard, W&B or OmegaConf can change in
    any release: it goes through library_internals.py, which checks each against the installed
    version (tests/test_library_internals.py) and fails naming it."""
    sources = {
        path.relative_to(REPO).as_posix(): path.read_text()
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.relative_to(PACKAGE).as_posix() not in DOORS
    }
    assert len(sources) > 50  # the whole package was read
    assert foreign_private_uses(sources) == [], "use a door function of library_internals.py"


def test_the_private_name_check_finds_a_librarys_private_name():
    source = (
        "class Mine:\n"
        "    _kept: int = 0\n"
        "    def __init__(self, _seed: int):\n"
        "        self._cache = {}\n"
        "    def _own(self):\n"
        "        return self._cache, self._kept, self._own, _seed\n"
        "def run(trainer, logger):\n"
        "    trainer._checkpoint_connector.dump_checkpoint(False)\n"
        "    return getattr(logger, '_experiment'), Mine()._own(), cfg._target_\n"
        "from lightning.pytorch.loops.fit_loop import _FitLoop\n"
        "from omegaconf._utils import get_value_kind\n"
        "from celeba_gender.training.run import _guarded\n"
    )
    assert foreign_private_uses({"m.py": source}) == [
        "m.py:8: ._checkpoint_connector",
        "m.py:9: ._experiment",
        "m.py:10: ._FitLoop",
        "m.py:11: ._utils",
    ]
