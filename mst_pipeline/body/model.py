"""`BodyModel`: an SMPL-format body model as a torch module.

``BodyModel(data)(betas, global_orient, body_pose, transl)`` returns a :class:`BodyOutput` with
posed vertices, 45 joints (SMPL's 24 followed by the 21 vertex joints of
``layout.EXTRA_VERTEX_NAMES``) and the 25 OpenPose BODY_25 joints. Everything is batched and runs
on the module's device; gradients flow to all inputs.

BODY_25 is the model's own points (SMPL's joints and vertex joints) until `use_keypoints` attaches
a detector's calibrated convention (`mst_pipeline.body.conventions`): then each calibrated slot is
its sparse vertex combination, and the convention's derived slots (Neck, MidHip) the midpoints of
theirs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from mst_pipeline.body.conventions import KeypointRegressor, model_hash
from mst_pipeline.body.layout import EXTRA_VERTEX_NAMES, SMPL_TO_BODY25
from mst_pipeline.body.lbs import blend_shapes, lbs, vertices2joints
from mst_pipeline.body.smpl_file import BodyModelData, BodyModelError, read_model_file


@dataclass
class BodyOutput:
    """Result of a forward pass (B batch, V vertices).

    vertices [B,V,3]; joints [B,45,3] (24 SMPL + 21 vertex joints); body25 [B,25,3] (OpenPose
    order); rest_joints [B,24,3] (shaped, unposed, untranslated); the inputs as used (zeros where
    not given): betas [B,K], global_orient [B,3], body_pose [B,69], transl [B,3].
    """

    vertices: Tensor
    joints: Tensor
    body25: Tensor
    rest_joints: Tensor
    betas: Tensor
    global_orient: Tensor
    body_pose: Tensor
    transl: Tensor


class BodyModel(nn.Module):
    """SMPL-format model with SMPL's 24-joint skeleton (user's SMPL file or the open model)."""

    def __init__(self, data: BodyModelData, num_betas: int | None = None) -> None:
        super().__init__()
        data.validate().require_smpl_skeleton()
        if data.extra_vertex_ids is None:
            raise BodyModelError(
                f"the model ({data.num_vertices} vertices) has no extra_vertex_ids for the OpenPose "
                f"joints {', '.join(EXTRA_VERTEX_NAMES)}; only the standard SMPL mesh gets them by default"
            )
        K = data.num_betas if num_betas is None else min(num_betas, data.num_betas)
        f32 = torch.float32
        self.num_betas = K
        self.parents = [int(p) for p in data.parents]
        self.attribution = data.attribution
        P = data.posedirs.shape[2]
        self.register_buffer("v_template", torch.as_tensor(data.v_template, dtype=f32))
        self.register_buffer("shapedirs", torch.as_tensor(data.shapedirs[:, :, :K], dtype=f32))
        posedirs = np.ascontiguousarray(data.posedirs.reshape(-1, P).T)  # [P, 3V]
        self.register_buffer("posedirs", torch.as_tensor(posedirs, dtype=f32))
        self.register_buffer("J_regressor", torch.as_tensor(data.J_regressor, dtype=f32))
        self.register_buffer("lbs_weights", torch.as_tensor(data.weights, dtype=f32))
        self.register_buffer("faces_tensor", torch.as_tensor(data.faces, dtype=torch.long))
        self.register_buffer("extra_vertex_ids", torch.as_tensor(data.extra_vertex_ids, dtype=torch.long))
        self.register_buffer("body25_index", torch.as_tensor(SMPL_TO_BODY25, dtype=torch.long))
        self.keypoints: KeypointRegressor | None = None
        self._kp: tuple[Tensor, Tensor, Tensor, dict[int, tuple[int, int]]] | None = None

    @property
    def hash(self) -> str:
        """The model's identity for its keypoint calibrations (`conventions.model_hash`)."""
        cached = self.__dict__.get("_hash")
        if cached is None:
            cached = model_hash(self.v_template.cpu().numpy(), self.faces, self.shapedirs.cpu().numpy())
            self.__dict__["_hash"] = cached
        return cached

    def use_keypoints(self, regressor: KeypointRegressor | None, _ids: np.ndarray | None = None) -> BodyModel:
        """Produce BODY_25 in REGRESSOR's convention from now on (None: the model's own points).
        Returns self."""
        self.keypoints = regressor
        self.__dict__.pop("_joint_model", None)
        if regressor is None:
            self._kp = None
            return self
        use, ids, w = regressor.arrays()
        if _ids is not None:  # a reduced model: ids renumbered by the caller
            ids = _ids
        if ids.max(initial=0) >= self.num_vertices:
            raise BodyModelError(f"the {regressor.convention} calibration names vertex {ids.max()}, "
                                 f"the model has {self.num_vertices}")
        dev = self.v_template.device
        self._kp = (torch.as_tensor(use, device=dev), torch.as_tensor(ids, device=dev),
                    torch.as_tensor(w, dtype=self.v_template.dtype, device=dev), regressor.derived_pairs())
        return self

    def _apply(self, fn, *args, **kwargs):  # keep the calibration's tensors on the module's device
        out = super()._apply(fn, *args, **kwargs)
        if self.keypoints is not None and self._kp is not None:
            use, ids, w, pairs = self._kp
            dev = self.v_template.device
            self._kp = (use.to(dev), ids.to(dev), w.to(device=dev, dtype=self.v_template.dtype), pairs)
        return out

    def _body25(self, joints: Tensor, vertices: Tensor) -> Tensor:
        body25 = joints[:, self.body25_index]
        if self._kp is None:
            return body25
        use, ids, w, pairs = self._kp
        calibrated = (vertices[:, ids] * w[None, :, :, None]).sum(2)  # [B, 25, 3]
        body25 = torch.where(use[None, :, None], calibrated, body25)
        if pairs:
            slots = list(pairs)
            mids = torch.stack([0.5 * (body25[:, a] + body25[:, b]) for a, b in pairs.values()], dim=1)
            body25 = body25.clone()
            body25[:, slots] = mids
        return body25

    @classmethod
    def from_file(cls, path: str | os.PathLike, num_betas: int | None = None) -> BodyModel:
        return cls(read_model_file(path), num_betas=num_betas)

    @property
    def faces(self) -> np.ndarray:
        """[F, 3] int64 triangle indices."""
        return self.faces_tensor.cpu().numpy()

    @property
    def num_vertices(self) -> int:
        return int(self.v_template.shape[0])

    def forward(
        self,
        betas: Tensor | None = None,
        global_orient: Tensor | None = None,
        body_pose: Tensor | None = None,
        transl: Tensor | None = None,
    ) -> BodyOutput:
        """Pose and shape the body.

        betas [B,K'] (K' <= num_betas, missing ones are 0), global_orient [B,3] axis-angle,
        body_pose [B,69] or [B,23,3] axis-angle per joint 1..23, transl [B,3]; any may be None
        (zeros). B is taken from the first given input; a batch of 1 broadcasts.
        """
        given = [t for t in (betas, global_orient, body_pose, transl) if t is not None]
        B = max((t.shape[0] for t in given), default=1)
        dev, dt = self.v_template.device, self.v_template.dtype

        def _fill(t: Tensor | None, n: int) -> Tensor:
            if t is None:
                return torch.zeros(B, n, device=dev, dtype=dt)
            t = t.to(device=dev, dtype=dt).reshape(t.shape[0], -1)
            return t.expand(B, -1) if t.shape[0] == 1 else t

        betas = _fill(betas, self.num_betas)
        if betas.shape[1] > self.num_betas:
            raise ValueError(f"got {betas.shape[1]} betas, the model has {self.num_betas}")
        if betas.shape[1] < self.num_betas:
            betas = torch.cat([betas, betas.new_zeros(B, self.num_betas - betas.shape[1])], dim=1)
        global_orient = _fill(global_orient, 3)
        body_pose = _fill(body_pose, 3 * (len(self.parents) - 1))
        transl = _fill(transl, 3)
        for name, t, n in (("global_orient", global_orient, 3), ("body_pose", body_pose, 69), ("transl", transl, 3)):
            if t.shape != (B, n):
                raise ValueError(f"{name} has shape {tuple(t.shape)}, expected [{B}, {n}]")
        pose = torch.cat([global_orient, body_pose], dim=1).view(B, -1, 3)
        vertices, joints = lbs(
            betas, pose, self.v_template, self.shapedirs, self.posedirs,
            self.J_regressor, self.parents, self.lbs_weights,
        )  # fmt: skip
        rest_joints = vertices2joints(self.J_regressor, self.v_template + blend_shapes(betas, self.shapedirs))
        joints = torch.cat([joints, vertices[:, self.extra_vertex_ids]], dim=1)
        vertices = vertices + transl[:, None]
        joints = joints + transl[:, None]
        return BodyOutput(
            vertices=vertices,
            joints=joints,
            body25=self._body25(joints, vertices),
            rest_joints=rest_joints,
            betas=betas,
            global_orient=global_orient,
            body_pose=body_pose,
            transl=transl,
        )

    def data(self) -> BodyModelData:
        """The model's arrays as a `BodyModelData` (e.g. for `write_model_npz`)."""
        P = self.posedirs.shape[0]
        return BodyModelData(
            v_template=self.v_template.cpu().numpy(), shapedirs=self.shapedirs.cpu().numpy(),
            posedirs=np.ascontiguousarray(self.posedirs.cpu().numpy().T.reshape(self.num_vertices, 3, P)),
            J_regressor=self.J_regressor.cpu().numpy(), weights=self.lbs_weights.cpu().numpy(),
            parents=np.array(self.parents), faces=self.faces, extra_vertex_ids=self.extra_vertex_ids.cpu().numpy(),
            attribution=self.attribution,
        )

    def joint_model(self) -> BodyModel:
        """The same model reduced to the vertices its joints depend on (cached).

        Joints come from the regressor's vertices (shaped, unposed) and the 21 extra vertices
        (posed); no other vertex matters to a fit. On the open model that is 198 of its 13,718 vertices,
        and SMPLify-P runs on it. Its joints equal this model's; its `vertices` are the kept subset.
        """
        cached = self.__dict__.get("_joint_model")
        if cached is not None and cached.v_template.device == self.v_template.device:
            return cached
        d = self.data()
        keep = np.union1d(np.flatnonzero(np.abs(d.J_regressor).sum(0) > 0), d.extra_vertex_ids)
        kp_ids = None
        if self.keypoints is not None:
            _, kp_ids, _ = self.keypoints.arrays()
            keep = np.union1d(keep, kp_ids.reshape(-1))
        reduced_data = BodyModelData(
            v_template=d.v_template[keep], shapedirs=d.shapedirs[keep], posedirs=d.posedirs[keep],
            J_regressor=d.J_regressor[:, keep], weights=d.weights[keep], parents=d.parents,
            faces=np.zeros((0, 3), np.int64), extra_vertex_ids=np.searchsorted(keep, d.extra_vertex_ids),
            attribution=d.attribution,
        )
        reduced = BodyModel(reduced_data)
        if self.keypoints is not None:
            reduced.use_keypoints(self.keypoints, _ids=np.searchsorted(keep, kp_ids))
        reduced = reduced.to(self.v_template.device)
        self.__dict__["_joint_model"] = reduced  # a plain attribute: not a submodule, not in state_dict
        return reduced

    def to_smplx(self):
        """The same model as an ``smplx.SMPL`` module (for tools built on smplx)."""
        import smplx
        from smplx.utils import Struct

        d = self.data()
        struct = Struct(
            v_template=d.v_template, shapedirs=d.shapedirs, posedirs=d.posedirs, J_regressor=d.J_regressor,
            weights=d.weights, kintree_table=np.stack([d.parents, np.arange(len(d.parents))]), f=d.faces,
        )
        ids = dict(zip(EXTRA_VERTEX_NAMES, d.extra_vertex_ids.tolist(), strict=True))
        return smplx.SMPL(model_path="", data_struct=struct, num_betas=self.num_betas, vertex_ids=ids)
