"""The MST's fits (paper §3.1, App. B): SMPLify-P (Eq. 1: `energy`; the batched fit: `smplify`,
its solvers: `solvers`, keypoint targets and start: `targets`), the optional PARE start (`pare/`),
the VPoser-style pose prior (`prior`), the full-body space measured from an aligned set
(`space_fit`) and finger poses fitted to hand keypoints (`hand_poses`)."""

# Images fitted together by default (`mst align`, `mst space`): batched L-BFGS is 17-26x faster
# per image than per-image L-BFGS at 64 images a batch, 6.5x at 16 (docs/mst.md, "Measured").
FIT_BATCH = 64

# Fewest optimiser steps a training takes. An epoch of a set no larger than a batch is one step, so
# `just demo`'s 48 poses (24 and their mirror images) at 100 epochs were 100 steps: a prior that
# reproduces its poses poorly (spine errors of 0.2-0.4 rad) and depends on its seed, one seed in six
# bending every unseen spine 50° forward so that 44 of 48 face fits diverged. At 1000 steps the
# errors are 0.05-0.1 rad and no seed fails (docs/mst.md, "Pose prior").
MIN_STEPS = 1000  # `train_prior`, `mst fit-prior --min-steps`
