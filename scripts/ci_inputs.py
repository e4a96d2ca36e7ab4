"""Inputs for the CI shard step: a small SMPL-format body file and a folder of images with OpenPose
JSON of posed people whose homographies are known. Built with the test suite's generators so the CI
step exercises `mst align` and `mst render-hands` exactly as the tests do.

Usage: python scripts/ci_inputs.py OUT_DIR   (writes OUT_DIR/body.npz and OUT_DIR/people/)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_align import write_dataset  # noqa: E402
from test_render_hands import toy_model_data  # noqa: E402
from test_smplify import toy_body_model  # noqa: E402

from mst_pipeline.body.smpl_file import write_model_npz  # noqa: E402
from mst_pipeline.space import default_space  # noqa: E402


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_model_npz(toy_model_data(), out / "body.npz")
    model = toy_body_model()
    write_dataset(out / "people", model, default_space(model), n=2)
    print(f"wrote {out / 'body.npz'} and {out / 'people'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
