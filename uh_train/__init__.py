"""Lean trainer for the continuous-resolution UnitedHuman GAN (CLIs: `uh-train`, `uh-generate`,
`uh-eval`). Importing the package is cheap: torch is imported by the modules that need it. This
package never imports `mst_pipeline`; the two meet only in the light contract `uh_train.format` (the
shard format, full-body space geometry, atomic writes, the allow-list unpickler)."""

__version__ = "0.1.0"
