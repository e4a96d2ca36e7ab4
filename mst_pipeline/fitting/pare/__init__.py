"""PARE's regression as SMPLify-P's initial body (paper §3.1; Kocabas et al., ICCV 2021), by job:
`network` (the model), `crops` (its inputs and cameras), `checkpoint` (loading the official file)
and `start` (the fit's `FitInit`).

The network is the released configuration (`hrnet_w32-conv` backbone, part-segmentation
attention, one locally connected 6-D rotation regressor per joint), written so that the official
Lightning checkpoint (`pare_checkpoint.ckpt`, `pare_w_3dpw_checkpoint.ckpt`) loads into it: our
`state_dict()` keys are the checkpoint's after removing `model.` (1868 `backbone.*`, 37 `head.*`).

    image ─▶ square 224² crop around the person (from its keypoints) ─▶ ImageNet normalisation
          ─▶ HRNet-W32 [480, 56, 56] ─▶ part attention (24 parts) ─▶ rot6d per joint, betas, camera

* Rotations: 6-D (Zhou et al.) read as a 3×2 matrix, Gram–Schmidt, columns (b1, b2, b1×b2) —
  `body.rotations.rot6d_to_rotmat`, the same convention as PARE's.
* Camera: weak perspective (s, tx, ty) in the crop's normalised [-1, 1] coordinates; PARE's
  perspective translation is (tx, ty, 2f/(224 s)) with f = 5000, whose projection divided by
  112 px is u = s·(X_xy + t), the project's camera (docs/mst.md, "Geometry"). `crop_cam_to_full_image` moves it to
  the whole image's normalised coordinates.
* Body frame: PARE's global orientation maps SMPL's frame (Y up, facing +Z) to the camera's
  (y down), so an upright person facing the camera has a 180° turn about X — the orientation
  `space.upright_orientation("front")` and SMPLify-P use. It is passed on unchanged.

`load_pare_checkpoint` reads tensors only: `torch.load(weights_only=True)`, and where that refuses
the Lightning file's pickled `hyper_parameters` (a yacs CfgNode), the project's allow-list
unpickler (`uh_train.format.unpickle`: tensors, numpy arrays, containers) with every other name
replaced by an inert stub that can hold state but never be called.
`pare_start` turns a batch of predictions into SMPLify-P's `FitInit`.
"""
