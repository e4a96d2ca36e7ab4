"""The layout rules of the two packages, checked on the source (ast), lazy imports inside functions
included: `mst_pipeline` imports from `uh_train` only the contract `uh_train.format`, `uh_train`
never imports `mst_pipeline`, the contract imports neither torch nor the rest of either package,
neither package has an import circle, and within each package a module imports only from its own
layer or the layers below it (LAYERS, the one statement of the layer order; docs/architecture.md)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mst_pipeline", "uh_train")
CONTRACT = "uh_train.format"
# Third-party packages the contract must not pull in (the trainer's and the MST's heavy dependencies).
HEAVY = ("torch", "torchvision", "webdataset", "lpips", "safetensors", "scipy", "mediapipe", "smplx", "anny",
         "trimesh", "pyrender", "bpy", "warp")

# Each package's layers, lowest first; an entry is a module or a folder (every module under it).
# A module may import from its own layer and the layers below, never from a layer above.
LAYERS = {
    "mst_pipeline": (
        ("mst_pipeline.space", "mst_pipeline.shards"),  # full-body space geometry; the shard writer and checks
        ("mst_pipeline.body",),  # body models, keypoint layouts, pose sets
        ("mst_pipeline.detect",),  # images in, 2-D keypoints out
        ("mst_pipeline.fitting",),  # SMPLify-P (Eq. 1), PARE, the pose prior, the measured space
        ("mst_pipeline.synthesis",),  # data the project makes: renders, hands, SR, synthetic figures
        ("mst_pipeline.align",),  # `mst align`: detect -> fit -> H -> shards
        ("mst_pipeline.cli",),  # the `mst` command line
    ),
    "uh_train": (
        ("uh_train.format",),  # the shard contract (no torch)
        ("uh_train.resample", "uh_train.augment", "uh_train.shard_reader", "uh_train.networks", "uh_train.losses",
         "uh_train.diagnostics", "uh_train.train_state"),  # reading shards; G and D; Eq. 6-10's terms
        ("uh_train.data", "uh_train.checkpoint", "uh_train.render"),  # patches and streams; weights; rendering
        ("uh_train.metrics",),  # FID, pFID, kFID, precision/recall
        ("uh_train.training",),  # what the loop needs: config, run folder, models, distributed, monitoring
        ("uh_train.train",),  # the loop
        ("uh_train.training.cli", "uh_train.generate", "uh_train.evaluate", "uh_train.viewer"),  # command lines
    ),
}


def module_files(root: Path, packages=PACKAGES) -> dict[str, Path]:
    """Dotted module name -> source file, for every .py file of the packages under ROOT."""
    out = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes under `if TYPE_CHECKING:` or `if __name__ == "__main__":` (never run
    when the module is imported, so no edge: `python -m uh_train.train` runs the CLI, which imports
    the loop as a module of its own)."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ("TYPE_CHECKING" in ast.unparse(node.test)
                                         or ast.unparse(node.test) == "__name__ == '__main__'"):
            skipped |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skipped


def imports_of(module: str, path: Path) -> list[tuple[str, int]]:
    """(imported dotted name, line) of every import statement in the file, at any depth (function
    bodies included). `from a import b` yields `a.b` (a submodule or a name in `a`)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    skipped = _type_checking_only(tree)
    out = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
    return out


def resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module of ours that importing NAME runs: the longest known prefix (None: not ours)."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in modules:
            return ".".join(parts[:n])
    return None


def import_graph(root: Path = ROOT, packages=PACKAGES) -> tuple[dict[str, set[str]], dict[str, list]]:
    """(edges: module -> our modules it imports, external: module -> [(name, line)] of other imports)."""
    modules = module_files(root, packages)
    edges: dict[str, set[str]] = {m: set() for m in modules}
    external: dict[str, list] = {m: [] for m in modules}
    for module, path in modules.items():
        for name, line in imports_of(module, path):
            target = resolve(name, modules)
            if target is None:
                external[module].append((name, line))
            elif target != module:
                edges[module].add(target)
    return edges, external


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def boundary_violations(edges: dict[str, set[str]], external: dict[str, list]) -> list[str]:
    """Every import that crosses the boundary other than into the contract, and every import of the
    contract outside itself (our modules or heavy third-party ones)."""
    def inside(module: str, package: str) -> bool:
        return module == package or module.startswith(package + ".")

    out = []
    for module, targets in sorted(edges.items()):
        for target in sorted(targets):
            if inside(module, "mst_pipeline") and inside(target, "uh_train") and not inside(target, CONTRACT):
                out.append(f"{module} -> {target}")
            elif inside(module, "uh_train") and inside(target, "mst_pipeline"):
                out.append(f"{module} -> {target}")
            elif inside(module, CONTRACT) and not inside(target, CONTRACT):
                out.append(f"{module} -> {target} (the contract imports only itself)")
    for module, names in sorted(external.items()):
        if inside(module, CONTRACT):
            out += [f"{module}:{line} -> {name} (heavy)" for name, line in names if name.split(".")[0] in HEAVY]
    return out


def missing_modules(files: list[Path], root: Path = ROOT, packages=PACKAGES) -> list[str]:
    """Absolute imports, in FILES, of a module of our packages that is not in the tree under ROOT
    (a path left behind by a move; where an older copy of the package is installed, it would even
    import). `from pkg import name` needs the module `pkg`, `import pkg.mod` the module `pkg.mod`."""
    modules = module_files(root, packages)
    out = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            out += [f"{path.relative_to(root)}:{node.lineno} -> {name}" for name in names
                    if name.split(".")[0] in packages and name not in modules]
    return out


def layer_of(module: str, layers) -> int | None:
    """Index of the layer whose entry names MODULE or a folder above it (the longest match)."""
    best, index = -1, None
    for i, entries in enumerate(layers):
        for entry in entries:
            if (module == entry or module.startswith(entry + ".")) and len(entry) > best:
                best, index = len(entry), i
    return index


def layering_violations(edges: dict[str, set[str]], layers=None) -> list[str]:
    """Every import of a higher layer, and every module of a package that no layer lists."""
    layers = LAYERS if layers is None else layers
    out = []
    for package, order in layers.items():
        for module, targets in sorted(edges.items()):
            if not module.startswith(package + "."):
                continue
            own = layer_of(module, order)
            if own is None:
                out.append(f"{module} is in no layer")
                continue
            for target in sorted(targets):
                theirs = layer_of(target, order)
                if theirs is not None and theirs > own:
                    out.append(f"{module} (layer {own}) -> {target} (layer {theirs})")
    return out


# ---------------------------------------------------------------------------------------------
# The rules, on this repository


def test_no_import_across_the_boundary_other_than_the_contract():
    edges, external = import_graph()
    assert len(edges) > 50 and any(CONTRACT in t for t in edges["mst_pipeline.shards.writer"])
    assert boundary_violations(edges, external) == []


def test_uh_train_has_no_import_circle():
    edges, _ = import_graph()
    assert circles({m: t for m, t in edges.items() if m.startswith("uh_train")}) == []


def test_mst_pipeline_has_no_import_circle():
    edges, _ = import_graph()
    found = circles({m: t for m, t in edges.items() if m.startswith("mst_pipeline")})
    assert found == [], [" ".join(c) for c in found]


def test_every_import_of_ours_names_a_module_in_the_tree():
    files = [p for folder in (*PACKAGES, "tests", "scripts", "benchmarks", "blender_scripts")
             for p in sorted((ROOT / folder).rglob("*.py"))]
    assert missing_modules(files) == []


def test_checker_finds_an_import_of_a_module_that_moved(tmp_path):
    root = _tree(tmp_path, {
        "uh_train/__init__.py": "",
        "mst_pipeline/__init__.py": "",
        "mst_pipeline/synthesis/__init__.py": "",
        "mst_pipeline/synthesis/synthetic.py": "",
        "tests/test_x.py": "from mst_pipeline.synthetic import f\nfrom mst_pipeline.synthesis import synthetic\n",
    })
    assert missing_modules([root / "tests" / "test_x.py"], root) == ["tests/test_x.py:1 -> mst_pipeline.synthetic"]


def test_lower_layers_never_import_higher_ones():
    edges, _ = import_graph()
    assert layering_violations(edges) == []


def test_the_contract_imports_without_torch_or_either_package():
    code = ("import sys, pkgutil, importlib, uh_train.format as f\n"
            "for m in pkgutil.iter_modules(f.__path__): importlib.import_module('uh_train.format.' + m.name)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'mst_pipeline')\n"
            "             or m.startswith('uh_train.') and not m.startswith('uh_train.format'))\n"
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------
# The checker itself, on a small made-up tree


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_checker_finds_a_circle_hidden_in_a_lazy_relative_import(tmp_path):
    root = _tree(tmp_path, {
        "uh_train/__init__.py": "",
        "uh_train/a.py": "from uh_train import b\n",
        "uh_train/b.py": "def f():\n    from .c import g\n",
        "uh_train/c.py": ("import numpy\nfrom typing import TYPE_CHECKING\n"
                          "if TYPE_CHECKING:\n    from uh_train import a\n"
                          "def g():\n    import uh_train.a\n"),
        "mst_pipeline/__init__.py": "",
    })
    edges, _ = import_graph(root)
    assert edges["uh_train.b"] == {"uh_train.c"} and edges["uh_train.c"] == {"uh_train.a"}
    assert circles(edges) == [["uh_train.a", "uh_train.b", "uh_train.c"]]


def test_checker_flags_each_kind_of_boundary_crossing(tmp_path):
    root = _tree(tmp_path, {
        "uh_train/__init__.py": "",
        "uh_train/format/__init__.py": "",
        "uh_train/format/spec.py": "import numpy\ndef f():\n    import torch\n",
        "uh_train/format/atomic.py": "from ..checkpoint import x\n",
        "uh_train/checkpoint.py": "def f():\n    from mst_pipeline.fitting.pare import y\n",
        "mst_pipeline/__init__.py": "",
        "mst_pipeline/fitting/pare.py": "from uh_train.format.spec import f\nfrom uh_train import checkpoint\n",
    })
    edges, external = import_graph(root)
    assert boundary_violations(edges, external) == [
        "mst_pipeline.fitting.pare -> uh_train.checkpoint",
        "uh_train.checkpoint -> mst_pipeline.fitting.pare",
        "uh_train.format.atomic -> uh_train.checkpoint (the contract imports only itself)",
        "uh_train.format.spec:3 -> torch (heavy)",
    ]


def test_checker_flags_an_import_of_a_higher_layer_and_an_unlisted_module(tmp_path):
    root = _tree(tmp_path, {
        "uh_train/__init__.py": "",
        "mst_pipeline/__init__.py": "",
        "mst_pipeline/body/__init__.py": "",
        "mst_pipeline/body/model.py": "def f():\n    from mst_pipeline.fitting import energy\n",
        "mst_pipeline/fitting/__init__.py": "",
        "mst_pipeline/fitting/energy.py": "from mst_pipeline.body.model import f\n",
        "mst_pipeline/stray.py": "",
    })
    edges, _ = import_graph(root)
    layers = {"mst_pipeline": (("mst_pipeline.body",), ("mst_pipeline.fitting",))}
    assert layering_violations(edges, layers) == [
        "mst_pipeline.body.model (layer 0) -> mst_pipeline.fitting.energy (layer 1)",
        "mst_pipeline.stray is in no layer",
    ]
