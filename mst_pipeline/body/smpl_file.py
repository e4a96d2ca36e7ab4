"""Reading and writing SMPL-format model files without chumpy and without running pickled code.

Official SMPL / SMPL-X pickles (``basicModel_*_lbs_10_207_0_v1.0.0.pkl``, ``SMPL_NEUTRAL.pkl``,
``SMPLX_*.pkl``) are Python 2 pickles whose ``shapedirs`` is a ``chumpy.ch.Ch`` and whose
``J_regressor`` is a ``scipy.sparse`` matrix. chumpy does not import on Python 3.11, and a plain
``pickle.load`` would run whatever a file names. :class:`ModelFileUnpickler` (the project's
allow-list unpickler, ``uh_train.format.unpickle``) resolves only an allow-list of names: chumpy
arrays and scipy sparse matrices become inert stand-ins that are turned into numpy arrays
afterwards, numpy arrays are rebuilt, and every other name is refused.

The project's own format is an ``.npz`` with SMPL's key names (so ``smplx`` can use it through
``smplx.utils.Struct``) plus ``extra_vertex_ids`` / ``extra_vertex_names`` (vertices for the
OpenPose nose, eyes, ears, toes, heels and fingertips) and a free-text ``attribution``.

API
---
``read_model_file(path) -> BodyModelData`` reads ``.pkl`` or ``.npz``;
``write_model_npz(data, path)`` writes atomically; ``import_model(src, out)`` does both.
"""

from __future__ import annotations

import copyreg
import io
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mst_pipeline.body.layout import EXTRA_VERTEX_NAMES, NUM_SMPL_JOINTS, SMPL_PARENTS
from uh_train.format.atomic import atomic_write
from uh_train.format.unpickle import NUMPY_ARRAYS, AllowListUnpickler

FORMAT = "unitedhuman-body/1"
REQUIRED_KEYS = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f")


class BodyModelError(ValueError):
    """A body-model file is missing, unreadable, unsafe or not SMPL-format."""


# ---------------------------------------------------------------------------------------------
# Restricted unpickling


class _Stub:
    """Stand-in for a pickled foreign object: keeps the state it is given, runs nothing."""

    kind = "object"
    origin = "?"
    state: Any = None  # NEWOBJ skips __init__; BUILD fills this through __setstate__

    def __init__(self, *args: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _stub_class(module: str, name: str, kind: str) -> type:
    return type(name, (_Stub,), {"kind": kind, "origin": f"{module}.{name}"})


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # Python 3 writes bytes in protocol-2 pickles as _codecs.encode(str, 'latin1').
    if encoding.lower().replace("-", "").replace("_", "") not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1", errors)


_SPARSE_MODULES = {"scipy.sparse.csc", "scipy.sparse._csc", "scipy.sparse.csr", "scipy.sparse._csr"}


class ModelFileUnpickler(AllowListUnpickler):
    """Unpickler that maps chumpy/scipy-sparse objects to stubs and refuses unknown names.

    Allowed: numpy array reconstruction, ``set``/``frozenset``, protocol-0/1 object
    reconstruction, any ``chumpy.*`` class (as a stub whose state holds the value ``x``) and
    ``scipy.sparse`` csc/csr matrices (as stubs holding ``data``/``indices``/``indptr``).
    """

    allowed = {
        **NUMPY_ARRAYS,
        ("__builtin__", "frozenset"): frozenset,
        ("builtins", "frozenset"): frozenset,
        ("__builtin__", "object"): object,
        ("builtins", "object"): object,
        ("copy_reg", "_reconstructor"): copyreg._reconstructor,
        ("copyreg", "_reconstructor"): copyreg._reconstructor,
        ("_codecs", "encode"): _latin1_encode,
    }

    def __init__(self, file: io.BufferedIOBase) -> None:
        super().__init__(file, encoding="latin1")
        self._stubs: dict[tuple[str, str], type] = {}

    def unknown_global(self, module: str, name: str) -> Any:
        kind = None
        if module == "chumpy" or module.startswith("chumpy."):
            kind = "chumpy"
        elif module in _SPARSE_MODULES and name in ("csc_matrix", "csr_matrix", "csc_array", "csr_array"):
            kind = "sparse"
        if kind is None:
            raise BodyModelError(
                f"refusing to load '{module}.{name}' from the pickle: only numpy arrays, chumpy "
                "arrays and scipy sparse matrices are allowed in an SMPL-format model file"
            )
        return self._stubs.setdefault((module, name), _stub_class(module, name, kind))

    def persistent_load(self, pid: Any) -> Any:
        raise BodyModelError("refusing a pickle with persistent ids (not an SMPL-format model file)")


def _sparse_to_dense(stub: _Stub) -> np.ndarray:
    state = stub.state if isinstance(stub.state, dict) else {}
    try:
        shape = tuple(int(n) for n in state.get("_shape", state.get("shape")))
        data = np.asarray(state["data"])
        indices = np.asarray(state["indices"], dtype=np.int64)
        indptr = np.asarray(state["indptr"], dtype=np.int64)
    except (KeyError, TypeError) as e:
        raise BodyModelError(f"sparse matrix {stub.origin} lacks its {e} field") from None
    dense = np.zeros(shape, dtype=data.dtype)
    runs = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    if "csc" in stub.origin:
        np.add.at(dense, (indices, runs), data)
    else:
        np.add.at(dense, (runs, indices), data)
    return dense


def _chumpy_to_array(stub: _Stub) -> np.ndarray:
    state = stub.state if isinstance(stub.state, dict) else {}
    if "x" in state:
        return np.asarray(_to_plain(state["x"]))
    if "a" in state and "idxs" in state:  # chumpy.reordering.Select (MANO files)
        a = np.asarray(_to_plain(state["a"])).ravel()
        out = a[np.asarray(state["idxs"])]
        shape = state.get("preferred_shape")
        return out.reshape(shape) if shape is not None else out
    raise BodyModelError(f"chumpy object {stub.origin} has no value ('x') to read")


def _to_plain(obj: Any) -> Any:
    """Replace stubs by numpy arrays, recursively through dicts, lists and tuples."""
    if isinstance(obj, _Stub):
        if obj.kind == "chumpy":
            return _chumpy_to_array(obj)
        if obj.kind == "sparse":
            return _sparse_to_dense(obj)
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_plain(v) for v in obj)
    return obj


def load_pickle_safely(path: str | os.PathLike) -> Any:
    """Unpickle PATH with :class:`ModelFileUnpickler`; chumpy/sparse values become numpy arrays."""
    try:
        with open(path, "rb") as f:
            raw = ModelFileUnpickler(f).load()
    except BodyModelError as e:
        raise BodyModelError(f"{path}: {e}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise BodyModelError(f"{path} is not a readable pickle ({type(e).__name__}: {e})") from None
    return _to_plain(raw)


# ---------------------------------------------------------------------------------------------
# The validated in-memory record


@dataclass
class BodyModelData:
    """An SMPL-format model as numpy arrays (V vertices, J joints, K betas, F faces).

    v_template [V,3], shapedirs [V,3,K], posedirs [V,3,9(J-1)], J_regressor [J,V] (dense),
    weights [V,J], parents [J] (root -1), faces [F,3] int64, extra_vertex_ids [21] in
    ``layout.EXTRA_VERTEX_NAMES`` order or None when unknown, attribution: free text,
    extras: any other arrays of the source file (kept by ``import``).
    """

    v_template: np.ndarray
    shapedirs: np.ndarray
    posedirs: np.ndarray
    J_regressor: np.ndarray
    weights: np.ndarray
    parents: np.ndarray
    faces: np.ndarray
    extra_vertex_ids: np.ndarray | None = None
    attribution: str = ""
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def num_vertices(self) -> int:
        return int(self.v_template.shape[0])

    @property
    def num_joints(self) -> int:
        return int(self.J_regressor.shape[0])

    @property
    def num_betas(self) -> int:
        return int(self.shapedirs.shape[2])

    def validate(self, source: str = "model") -> BodyModelData:
        """Check shapes agree with each other; raise BodyModelError naming what is wrong."""
        V = self.v_template.shape[0] if self.v_template.ndim == 2 else -1
        J = self.J_regressor.shape[0] if self.J_regressor.ndim == 2 else -1
        problems = []
        if self.v_template.shape != (V, 3):
            problems.append(f"v_template has shape {self.v_template.shape}, expected [V, 3]")
        if self.shapedirs.ndim != 3 or self.shapedirs.shape[:2] != (V, 3):
            problems.append(f"shapedirs has shape {self.shapedirs.shape}, expected [{V}, 3, K]")
        if self.posedirs.shape != (V, 3, 9 * (J - 1)):
            problems.append(f"posedirs has shape {self.posedirs.shape}, expected [{V}, 3, {9 * (J - 1)}]")
        if self.J_regressor.shape != (J, V):
            problems.append(f"J_regressor has shape {self.J_regressor.shape}, expected [J, {V}]")
        if self.weights.shape != (V, J):
            problems.append(f"weights has shape {self.weights.shape}, expected [{V}, {J}]")
        if self.parents.shape != (J,) or (J > 0 and self.parents[0] != -1):
            problems.append(f"kintree_table gives {self.parents.shape[0]} parents for {J} joints, root not -1")
        elif np.any(self.parents[1:] >= np.arange(1, J)) or np.any(self.parents[1:] < 0):
            problems.append("kintree_table: every joint's parent must come before it")
        if self.faces.ndim != 2 or self.faces.shape[1] != 3:
            problems.append(f"f has shape {self.faces.shape}, expected [F, 3]")
        elif self.faces.size and (self.faces.min() < 0 or self.faces.max() >= V):
            problems.append(f"f indexes vertices outside 0..{V - 1}")
        if self.extra_vertex_ids is not None:
            ids = self.extra_vertex_ids
            if ids.shape != (len(EXTRA_VERTEX_NAMES),) or ids.min() < 0 or ids.max() >= V:
                problems.append(f"extra_vertex_ids must be {len(EXTRA_VERTEX_NAMES)} vertex indices < {V}")
        if problems:
            raise BodyModelError(f"{source} is not a consistent SMPL-format model: " + "; ".join(problems))
        return self

    def require_smpl_skeleton(self, source: str = "model") -> BodyModelData:
        """Raise unless the model has SMPL's 24-joint tree (SMPL-H/SMPL-X have more joints)."""
        if self.num_joints != NUM_SMPL_JOINTS or tuple(int(p) for p in self.parents) != SMPL_PARENTS:
            raise BodyModelError(
                f"{source} has {self.num_joints} joints; the pipeline needs an SMPL model (24 joints, "
                "SMPL's kinematic tree). SMPL-H/SMPL-X files can be imported but not used as the body model."
            )
        return self


def _smplx_default_vertex_ids(num_vertices: int) -> np.ndarray | None:
    """Vertex ids of the standard SMPL mesh (6890 vertices) as published with smplx."""
    if num_vertices != 6890:
        return None
    try:
        from smplx.vertex_ids import vertex_ids
    except ImportError:  # pragma: no cover - smplx is part of the `mst` extra
        return None
    return np.array([vertex_ids["smplh"][n] for n in EXTRA_VERTEX_NAMES], dtype=np.int64)


def _from_mapping(d: dict[str, Any], source: str) -> BodyModelData:
    if not isinstance(d, dict):
        raise BodyModelError(f"{source} holds a {type(d).__name__}, not the dict of an SMPL-format model")
    missing = [k for k in REQUIRED_KEYS if k not in d]
    if missing:
        have = ", ".join(sorted(map(str, d))) or "nothing"
        raise BodyModelError(
            f"{source} is not an SMPL-format model: it lacks {', '.join(repr(k) for k in missing)} "
            f"(it has: {have})"
        )
    arrays = {}
    for k in REQUIRED_KEYS:
        try:
            arrays[k] = np.asarray(d[k])
        except Exception as e:  # noqa: BLE001 - any unconvertible value is a format error
            raise BodyModelError(f"{source}: {k!r} is not an array ({e})") from None
        if arrays[k].dtype == object:
            raise BodyModelError(f"{source}: {k!r} is a {type(d[k]).__name__}, not a numeric array")
    kintree = arrays["kintree_table"].astype(np.int64)
    if kintree.ndim != 2 or kintree.shape[0] != 2:
        raise BodyModelError(f"{source}: kintree_table has shape {kintree.shape}, expected [2, J]")
    parents = kintree[0].copy()
    parents[0] = -1  # stored as uint32 max in the official files
    shapedirs = arrays["shapedirs"].astype(np.float32)
    if shapedirs.ndim == 2:  # some exports drop the betas axis for one component
        shapedirs = shapedirs[..., None]
    ids = d.get("extra_vertex_ids")
    if ids is not None:
        ids = np.asarray(ids, dtype=np.int64)
        names = d.get("extra_vertex_names")
        if names is not None and tuple(str(n) for n in np.asarray(names)) != EXTRA_VERTEX_NAMES:
            raise BodyModelError(f"{source}: extra_vertex_names differ from {EXTRA_VERTEX_NAMES}")
    else:
        ids = _smplx_default_vertex_ids(arrays["v_template"].shape[0])
    attribution = d.get("attribution", "")
    extras = {
        str(k): np.asarray(v)
        for k, v in d.items()
        if k not in REQUIRED_KEYS
        and k not in ("extra_vertex_ids", "extra_vertex_names", "attribution", "format")
        and isinstance(v, np.ndarray | int | float | str)
        and np.asarray(v).dtype != object
    }
    data = BodyModelData(
        v_template=arrays["v_template"].astype(np.float32),
        shapedirs=shapedirs,
        posedirs=arrays["posedirs"].astype(np.float32),
        J_regressor=arrays["J_regressor"].astype(np.float32),
        weights=arrays["weights"].astype(np.float32),
        parents=parents,
        faces=arrays["f"].astype(np.int64),
        extra_vertex_ids=ids,
        attribution=str(np.asarray(attribution)),
        extras=extras,
    )
    return data.validate(source)


def read_model_file(path: str | os.PathLike) -> BodyModelData:
    """Read an SMPL-format model from a ``.pkl`` (chumpy allowed, no code run) or ``.npz``."""
    path = Path(path)
    if not path.is_file():
        raise BodyModelError(f"body model file {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK"):  # npz = zip archive
        try:
            with np.load(path, allow_pickle=False) as z:
                names = set(z.files)
                d: dict[str, Any] = {}
                for k in names:
                    try:
                        d[k] = z[k]
                    except ValueError:  # object array: needs pickle, skip unless required
                        if k in REQUIRED_KEYS:
                            raise BodyModelError(f"{path}: {k!r} is stored as a pickled object array") from None
        except BodyModelError:
            raise
        except Exception as e:  # noqa: BLE001 - zip/npy errors of a corrupt file
            raise BodyModelError(f"{path} is not a readable .npz ({type(e).__name__}: {e})") from None
    elif head[:1] == b"\x80" or path.suffix == ".pkl":
        d = load_pickle_safely(path)
    else:
        raise BodyModelError(f"{path} is neither an .npz archive nor a pickle")
    return _from_mapping(d, str(path))


def write_model_npz(data: BodyModelData, path: str | os.PathLike) -> Path:
    """Write DATA as a compressed ``.npz`` atomically (temp file in the same folder, then rename)."""
    data.validate(str(path))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kintree = np.stack([data.parents, np.arange(data.num_joints)]).astype(np.int64)
    arrays: dict[str, np.ndarray] = dict(data.extras)
    arrays.update(
        format=np.array(FORMAT),
        v_template=data.v_template,
        shapedirs=data.shapedirs,
        posedirs=data.posedirs,
        J_regressor=data.J_regressor,
        weights=data.weights,
        kintree_table=kintree,
        f=data.faces,
        attribution=np.array(data.attribution),
    )
    if data.extra_vertex_ids is not None:
        arrays["extra_vertex_ids"] = data.extra_vertex_ids.astype(np.int64)
        arrays["extra_vertex_names"] = np.array(EXTRA_VERTEX_NAMES)
    return atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


def import_model(src: str | os.PathLike, out: str | os.PathLike) -> BodyModelData:
    """Convert an SMPL-format ``.pkl``/``.npz`` (chumpy or not) to the project's clean ``.npz``."""
    data = read_model_file(src)
    if not data.attribution:
        data.attribution = (
            f"Converted from {Path(src).name}. SMPL-family models are licensed by the Max Planck "
            "Society; the licence of the original file applies to this file."
        )
    write_model_npz(data, out)
    return data
