"""Imports run one way: runtime <- engines <- train <- benchmarks (docs/ARCHITECTURE.md, "Layers").

Read from the source (ast; nothing is imported), every .py file of the four packages:

    streamcad/   the runtime      (module streamcad.*)              layer 0
    engines/     export/convert   (module streamcad.engines.*)      layer 1
    train/       training         (module streamcad.train.*)        layer 2
    benchmarks/  benchmarks       (module streamcad.benchmarks.*)   layer 3

Failures name file:line. What counts as importing module M:
  - `import M`, `from M import x`, relative imports (resolved), at any depth (inside functions too);
  - `importlib.import_module("M")` / `__import__("M")` with a constant name;
  - for the layer rule also any string constant that is exactly a module name of a higher layer
    ("streamcad.train.cv"): that is how a registry names what it imports lazily. The one
    exception is the CLI dispatch table, streamcad/cli.py's COMMANDS (subcommand -> module), the
    plug-in point through which the one `streamcad` command reaches the tooling.

Rules:
  1. a module imports nothing of a higher layer;
  2. no import cycle among the modules of one package (imports inside functions count: a lazy
     import hides a cycle from Python, not from the design);
  3. no private name (`_x`, or a module `_x`) is taken from another of the four packages, by
     `from M import _x` or by `module._x` on an imported module.
"""

from __future__ import annotations

import ast
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# (folder, module prefix, layer rank)
PACKAGES = (
    ("streamcad", "streamcad", 0),
    ("engines", "streamcad.engines", 1),
    ("train", "streamcad.train", 2),
    ("benchmarks", "streamcad.benchmarks", 3),
)
LAYER_NAMES = {0: "runtime", 1: "engines", 2: "train", 3: "benchmarks"}
TOOLING = ("engines", "train", "benchmarks")
# the one exception: (file, assignment target) whose string constants may name any module
CLI_TABLE = ("streamcad/cli.py", "COMMANDS")
MODULE_STRING = re.compile(r"streamcad\.(?:engines|train|benchmarks)(?:\.[A-Za-z_]\w*)*")


@dataclass(frozen=True)
class Use:
    """One reference from a file to a module (and the names it takes from it)."""

    module: str
    line: int
    names: tuple[str, ...] = ()
    how: str = "import"  # 'import' | 'import_module' | 'string'


@dataclass
class Source:
    path: Path
    rel: str
    module: str
    is_package: bool
    rank: int
    uses: list[Use] = field(default_factory=list)
    attrs: list[tuple[str, str, int]] = field(default_factory=list)  # (module, private attr, line)


def layer_of(module: str) -> int | None:
    """Rank of the package a module name belongs to; None for anything outside the four."""
    head, _, rest = module.partition(".")
    if head in TOOLING:  # a bare `train` / `engines`: the old top-level names
        return dict(zip(TOOLING, (1, 2, 3), strict=True))[head]
    if head != "streamcad":
        return None
    sub = rest.partition(".")[0]
    return {"engines": 1, "train": 2, "benchmarks": 3}.get(sub, 0)


def package_of(module: str) -> str | None:
    rank = layer_of(module)
    return None if rank is None else LAYER_NAMES[rank]


def _resolve(src_module: str, is_package: bool, level: int, name: str | None) -> str:
    base = src_module.split(".")
    if not is_package:
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, name] if name else base)


def _import_module_call(node: ast.Call) -> str | None:
    f = node.func
    called = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
    if called not in ("import_module", "__import__") or not node.args:
        return None
    arg = node.args[0]
    return arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else None


def _cli_table_strings(tree: ast.Module) -> set[int]:
    """ids of the string constants inside the CLI dispatch table's assignment."""
    ok: set[int] = set()
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == CLI_TABLE[1] for t in targets) and node.value is not None:
            ok |= {id(c) for c in ast.walk(node.value) if isinstance(c, ast.Constant)}
    return ok


def parse(path: Path, rel: str, module: str, is_package: bool, rank: int, text: str | None = None) -> Source:
    text = path.read_text(encoding="utf-8") if text is None else text
    tree = ast.parse(text, filename=rel)
    src = Source(path, rel, module, is_package, rank)
    allowed = _cli_table_strings(tree) if rel == CLI_TABLE[0] else set()
    bound: dict[str, str] = {}  # local name -> module it is bound to by an import
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    import_args: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                src.uses.append(Use(a.name, node.lineno))
                bound[a.asname or a.name.partition(".")[0]] = a.name if a.asname else a.name.partition(".")[0]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, is_package, node.level, node.module) if node.level else node.module
            names = tuple(a.name for a in node.names)
            src.uses.append(Use(target, node.lineno, names))
            for a in node.names:
                bound[a.asname or a.name] = f"{target}.{a.name}"
        elif isinstance(node, ast.Call) and (name := _import_module_call(node)) is not None:
            import_args.add(id(node.args[0]))
            if name.startswith("."):
                pkg = next((k.value.value for k in node.keywords if k.arg == "package" and isinstance(k.value, ast.Constant)), None)
                if pkg is None:
                    continue
                level = len(name) - len(name.lstrip("."))
                name = _resolve(pkg, True, level, name.lstrip(".") or None)
            src.uses.append(Use(name, node.lineno, how="import_module"))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in allowed
                and id(node) not in docstrings and id(node) not in import_args and MODULE_STRING.fullmatch(node.value)):
            src.uses.append(Use(node.value, node.lineno, how="string"))
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
              and _private(node.attr)):
            src.attrs.append((bound[node.value.id], node.attr, node.lineno))
    return src


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def module_name(folder: str, prefix: str, path: Path, root: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(root / folder).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join([prefix, *parts]), is_package


def collect(root: Path = REPO) -> dict[str, Source]:
    """Every .py file of the four packages -> {module name: Source}."""
    out: dict[str, Source] = {}
    for folder, prefix, rank in PACKAGES:
        for path in sorted((root / folder).rglob("*.py")):
            inner = path.relative_to(root / folder).parts
            if "__pycache__" in inner or (rank == 0 and inner[0] in TOOLING):  # a wheel-layout copy
                continue
            name, is_package = module_name(folder, prefix, path, root)
            out[name] = parse(path, path.relative_to(root).as_posix(), name, is_package, rank)
    return out


def layer_violations(sources: dict[str, Source]) -> list[str]:
    bad = []
    for src in sources.values():
        for use in src.uses:
            # `from streamcad import train` takes the package train: judge module.name too
            for name in (use.module, *(f"{use.module}.{n}" for n in use.names if n != "*")):
                rank = layer_of(name)
                if rank is not None and rank > src.rank:
                    bad.append(f"{src.rel}:{use.line}: the {LAYER_NAMES[src.rank]} layer {use.how}s {name} "
                               f"(the {LAYER_NAMES[rank]} layer is above it)")
                    break
    return sorted(bad)


def _target(use: Use, sources: dict[str, Source]) -> list[str]:
    """The modules of the tree a use refers to: `from pkg import sub` names the submodule."""
    subs = [f"{use.module}.{n}" for n in use.names if f"{use.module}.{n}" in sources]
    if subs:
        return subs
    return [use.module] if use.module in sources else []


def cycles(sources: dict[str, Source]) -> list[str]:
    """Strongly connected components (Tarjan) of the same-package import graph, with their edges."""
    graph: dict[str, dict[str, int]] = {}
    for name, src in sources.items():
        edges: dict[str, int] = {}
        for use in src.uses:
            if use.how == "string":
                continue
            for t in _target(use, sources):
                if t != name and package_of(t) == package_of(name):
                    edges.setdefault(t, use.line)
        graph[name] = edges
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # recursive Tarjan: the graphs are a few hundred modules
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    out = []
    for comp in found:
        edges = [f"{sources[a].rel}:{line} -> {b}" for a in comp for b, line in sorted(graph[a].items()) if b in comp]
        out.append("import cycle " + " <-> ".join(comp) + ": " + "; ".join(edges))
    return out


def private_violations(sources: dict[str, Source]) -> list[str]:
    bad = []
    for src in sources.values():
        mine = LAYER_NAMES[src.rank]
        for use in src.uses:
            other = package_of(use.module)
            if other is None or other == mine:
                continue
            private = [p for p in use.module.split(".") if _private(p)] + [n for n in use.names if _private(n)]
            if private:
                bad.append(f"{src.rel}:{use.line}: takes private {private} from {use.module} (package {other})")
        for mod, attr, line in src.attrs:
            other = package_of(mod)
            if other is not None and other != mine:
                bad.append(f"{src.rel}:{line}: uses private {mod}.{attr} (package {other})")
    return sorted(bad)


# ----------------------------------------------------------------------------- the repository


@pytest.fixture(scope="module")
def sources() -> dict[str, Source]:
    return collect()


def test_walks_every_package(sources):
    ranks = {s.rank for s in sources.values()}
    assert ranks == {0, 1, 2, 3}
    for must in ("streamcad.cli", "streamcad.backends.torch", "streamcad.engines.export", "streamcad.train.model",
                 "streamcad.benchmarks.cli"):
        assert must in sources, must


def test_imports_run_one_way(sources):
    bad = layer_violations(sources)
    assert not bad, "imports from a higher layer:\n" + "\n".join(bad)


def test_no_import_cycles_within_a_package(sources):
    bad = cycles(sources)
    assert not bad, "\n".join(bad)


def test_no_private_names_across_packages(sources):
    bad = private_violations(sources)
    assert not bad, "private names across packages:\n" + "\n".join(bad)


def test_the_cli_table_is_the_one_exception(sources):
    """COMMANDS names the tooling and is exempt; nothing else in the runtime names them."""
    cli = sources["streamcad.cli"]
    text = cli.path.read_text(encoding="utf-8")
    assert MODULE_STRING.search(text), "streamcad/cli.py no longer names the tooling: drop CLI_TABLE"
    assert not [u for u in cli.uses if (layer_of(u.module) or 0) > 0]


# ----------------------------------------------------------------------------- the checker on known input


def _tree(tmp_path: Path, files: dict[str, str]) -> dict[str, Source]:
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text), encoding="utf-8")
    for folder, _, _ in PACKAGES:
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / "__init__.py").touch()
    return collect(tmp_path)


def test_checker_finds_each_kind_of_upward_import(tmp_path):
    src = _tree(tmp_path, {
        "streamcad/a.py": """\
            import importlib

            def f():
                from streamcad.train.model import build_model  # inside a function
                return importlib.import_module("streamcad.engines.export")
            TABLE = {"x": "streamcad.benchmarks.cli"}
            COMMANDS = {"train": "streamcad.train.cli"}  # exempt only in streamcad/cli.py
            """,
        "streamcad/cli.py": 'COMMANDS = {"train": ("streamcad.train.cli", "help")}\nOTHER = "streamcad.train.cv"\n',
        "engines/e.py": "from ..train import common\n",  # relative, resolves to streamcad.train
        "train/t.py": "import streamcad.benchmarks.stats\nfrom streamcad import preprocess\n",
        "engines/f.py": "from streamcad import train\n",  # the package itself, taken as a name
        "benchmarks/b.py": "from streamcad.train import model\n",  # downward: fine
    })
    bad = layer_violations(src)
    assert sorted(bad) == sorted([
        "streamcad/a.py:4: the runtime layer imports streamcad.train.model (the train layer is above it)",
        "streamcad/a.py:5: the runtime layer import_modules streamcad.engines.export (the engines layer is above it)",
        "streamcad/a.py:6: the runtime layer strings streamcad.benchmarks.cli (the benchmarks layer is above it)",
        "streamcad/a.py:7: the runtime layer strings streamcad.train.cli (the train layer is above it)",
        "streamcad/cli.py:2: the runtime layer strings streamcad.train.cv (the train layer is above it)",
        "engines/e.py:1: the engines layer imports streamcad.train (the train layer is above it)",
        "engines/f.py:1: the engines layer imports streamcad.train (the train layer is above it)",
        "train/t.py:1: the train layer imports streamcad.benchmarks.stats (the benchmarks layer is above it)",
    ])


def test_checker_finds_cycles_and_private_names(tmp_path):
    src = _tree(tmp_path, {
        "benchmarks/cli.py": "def f():\n    from streamcad.benchmarks import report\n",
        "benchmarks/report.py": "from streamcad.benchmarks.cli import _accuracy\n",
        "train/x.py": "from streamcad.train import y\n",
        "train/y.py": "import streamcad.train.z\n",
        "train/z.py": "from . import x\nfrom streamcad.engines import export\nexport._parity()\n",
        "engines/export.py": "def _parity(): ...\n",
        "engines/ok.py": "from streamcad.engines.export import _parity  # same package: fine\n",
    })
    found = cycles(src)
    assert len(found) == 2
    assert found[0].startswith("import cycle streamcad.benchmarks.cli <-> streamcad.benchmarks.report: ")
    assert "benchmarks/report.py:1 -> streamcad.benchmarks.cli" in found[0]
    assert found[1].startswith("import cycle streamcad.train.x <-> streamcad.train.y <-> streamcad.train.z")
    assert sorted(private_violations(src)) == [
        "train/z.py:3: uses private streamcad.engines.export._parity (package engines)",
    ]
    src = _tree(tmp_path / "second", {"train/w.py": "from streamcad.benchmarks.cli import _accuracy\nfrom streamcad import _x\n"})
    assert sorted(private_violations(src)) == [
        "train/w.py:1: takes private ['_accuracy'] from streamcad.benchmarks.cli (package benchmarks)",
        "train/w.py:2: takes private ['_x'] from streamcad (package runtime)",
    ]
