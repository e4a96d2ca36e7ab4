"""The MST's fits (paper §3.1, App. B): SMPLify-P (Eq. 1: `energy`; the batched fit: `smplify`,
its solvers: `solvers`, keypoint targets and start: `targets`), the optional PARE start (`pare/`),
the VPoser-style pose prior (`prior`), the full-body space measured from an aligned set
(`space_fit`) and finger poses fitted to hand keypoints (`hand_poses`)."""

# Images fitted together by default (`mst align`, `mst space`): batched L-BFGS is 17-26x faster
# per image than per-image L-BFGS at 64 images a batch, 6.5x at 16 (docs/mst.md, "Measured").
FIT_BATCH = 64
