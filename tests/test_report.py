"""The demo report as a reader sees it: tables instead of dumps, captioned figures, zoomed patches next
to their region, the honest limits of the run; and, where a Chromium exists, checked in the browser.

Built from stand-in stage outputs (no pipeline run), so it takes seconds."""

from __future__ import annotations

import importlib.util
import json
import re

import numpy as np
import pytest
from PIL import Image
from test_demo import ROOT, demo_module

FACE_BOX = (112, 10, 144, 42)  # the face zoom (centre (0.5, 0.1), side 1/8) in a 256 px image


def png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    demo = demo_module()
    out = tmp_path_factory.mktemp("demo")
    rng = np.random.default_rng(0)
    (out / "validate.json").write_text(json.dumps({
        "folder": str(out / "shards"), "ok": True, "shards": 3, "samples": 9,
        "sources": {"people-face": {"samples": 5, "shards": 1, "kinds": {"face": 5}, "tiers": {"SR": 5},
                                    "density": [1010.5, 1090.2]},
                    "people-full": {"samples": 4, "shards": 2, "kinds": {"full": 4}, "tiers": {"LR": 4},
                                    "density": [128.0, 128.0]}},
        "defects": []}))
    (out / "space.json").write_text(json.dumps({
        "format": "unitedhuman-space/1", "cam_bar": [1.0514, 0.0021, 0.0900], "pitch": 0.0107, "density": 128.0,
        "count": 24, "source": "full", "pitch_spread": {"from": "feet", "count": 24, "std": 0.027, "p5": -0.029,
                                                        "p95": 0.067}}))
    full = rng.integers(0, 256, (256, 256, 3))
    png(out / "gen256" / "seed0000.png", full)
    png(out / "gen256" / "grid.png", full)
    left, top, right, bottom = FACE_BOX
    png(out / "face" / "seed0000.png", full[top:bottom, left:right])  # exactly the box: difference 0
    png(out / "hand" / "seed0000.png", np.zeros((32, 32, 3)))
    png(out / "gen128" / "grid.png", rng.integers(0, 256, (256, 512, 3)))
    png(out / "preview.png", rng.integers(0, 256, (384, 1152, 3)))
    (out / "eval").mkdir()
    (out / "eval" / "metrics.md").write_text(
        "# Evaluation\n\n| Method | FID ↓ | Precision ↑ | Recall ↑ |\n|---|---:|---:|---:|\n| net | 395.41 | 0.000 | "
        "0.000 |\n\n* n = 8 per metric\n* precision/recall: k = 3, inception features\n")
    runs = out / "runs"
    for stage, kimg in (("stage1", 3.0), ("stage2", 1.0)):
        png(runs / stage / "samples-000008.png", rng.integers(0, 256, (64, 128, 3)))
        (runs / stage / "log.jsonl").write_text("".join(
            json.dumps({"step": s, "kimg": kimg * s / 4, "D/global": 1.0 / s, "G/adv": 0.5 + s, "G/pixel_lpips": 0.0,
                        "D/consistency": 0.1 * s}) + "\n" for s in range(1, 5)))
        (runs / stage / "done").write_text("60.0\n")
    (runs / "stage2" / "run.json").write_text(json.dumps({  # consistency weighted 0: logged, not trained on
        "config": {"lambda_cr": 0.0, "lambda_p": 5.0, "r1_gamma": 2.0}, "start": "stage 1",
        "pixel_loss": "L1 only (LPIPS off)"}))
    from safetensors.numpy import save_file

    save_file({"G_ema.a": np.zeros((20, 100), np.float32), "G_ema.b": np.zeros(1000, np.float32),
               "D.c": np.zeros(50_000, np.float32)}, str(runs / "stage2" / "network-latest.safetensors"))
    # A shipped checkpoint (`just learn`'s) with its provenance, and its renders next to the demo's.
    from uh_train.checkpoint import save_checkpoint
    from uh_train.generate import random_generator

    demo.LEARNED = out / "learned.safetensors"
    save_checkpoint(demo.LEARNED, {"G_ema": random_generator("tiny", 0, "cpu")},
                    config={"provenance": {"command": "just learn", "commit": "abc1234", "stage1_kimg": 61.5,
                                           "stage2_kimg": 11.2}})
    learned = rng.integers(0, 256, (256, 256, 3))
    png(out / "learned-gen256" / "seed0000.png", learned)
    png(out / "learned-gen256" / "grid.png", learned)
    png(out / "learned-gen32" / "grid.png", learned[:96, :96])
    png(out / "learned-face" / "seed0000.png", learned[top:bottom, left:right])
    stages = demo.stages(out, demo.SMALL)
    for stage in stages:
        for view in demo.VIEW_SOURCES:
            for fig in stage.figures:
                for p in fig.paths:
                    if p.parent.name == view:
                        png(p, rng.integers(0, 256, (64, 64, 3)))
    results = [{"name": s.name, "status": "reused", "seconds": 0.0, "took": 60.0 if s.name.startswith("train") else 6.0}
               for s in stages]
    path = demo.write_report(out, stages, results, eval_n=8)
    return demo, out, path.read_text()


def test_validate_and_space_are_tables_with_the_raw_json_behind_a_link(report):
    _, _, text = report
    assert "<pre>" not in text and "cam_bar" not in text and '"sources"' not in text  # no dumps
    assert "<b>9 samples in 3 shards, no defects.</b>" in text
    assert ("<tr><td>people-face</td><td>5</td><td>1</td><td>face 5</td><td>SR 5</td><td>1010–1090</td></tr>"
            in text)
    assert "<tr><td>people-full</td><td>4</td><td>2</td><td>full 4</td><td>LR 4</td><td>128</td></tr>" in text
    assert '<a href="validate.json">raw JSON' in text and '<a href="space.json">raw JSON' in text
    assert "<td>ᾱ: scale s</td><td>1.0514</td>" in text
    assert "<td>ᾱ: translation (tx, ty)</td><td>(+0.0021, +0.0900)</td>" in text
    assert "<td>ô: mean pitch</td><td>+0.0107 rad (+0.61°)</td>" in text
    assert "<td>density</td><td>128 px</td>" in text
    # Markdown tables (the metrics) become tables, with their notes as a list.
    assert "<tr><td>net</td><td>395.41</td><td>0.000</td><td>0.000</td></tr></table><ul><li>n = 8 per metric</li>" \
        in text


def test_every_image_is_in_a_captioned_figure_at_an_inspectable_size(report):
    _, out, text = report
    figures = re.findall(r"<figure>(.*?)</figure>", text, re.S)
    assert len(figures) >= 6
    in_figures = sum(len(re.findall(r"<img ", f)) for f in figures)
    assert in_figures == len(re.findall(r"<img ", text)) > 0
    for number, fig in enumerate(figures, 1):
        caption = re.search(r"<figcaption>(.*)</figcaption>", fig, re.S).group(1)
        assert f"<b>Figure {number}.</b>" in caption
        assert "<b>Look for:</b>" in caption and "<b>Made by:</b> <code>" in caption
    for src, width in re.findall(r'<img src="([^"]+)" width="(\d+)"', text):
        assert (out / src).is_file(), src
        assert int(width) >= 128, src  # 64 px renders and 32 px zooms are enlarged
    people = next(f for f in figures if "rendered people" in f)
    assert people.count("<img ") == 9 and people.count("<br><img") == 2  # one person's three views per row
    assert sum("loss terms the trainer logged" in f and "<svg" in f for f in figures) == 2  # curves captioned
    # The 128 px-per-image grid (512 px wide) is enlarged 2x; the 1152 px preview fits the page.
    assert '<img src="gen128/grid.png" width="1024" height="512"' in text
    assert '<img src="preview.png" width="1040" height="347"' in text


def test_zoomed_patches_sit_next_to_their_boxed_region(report):
    demo, out, text = report
    assert demo.zoom_box(256, (0.5, 0.1), 8.0) == FACE_BOX
    boxed = np.asarray(Image.open(out / "zoom" / "seed0000-boxes.png"))
    left, top, right, bottom = FACE_BOX
    assert tuple(boxed[top - 1, (left + right) // 2]) == (230, 30, 30)  # the face box, red, just outside it
    assert tuple(boxed[(top + bottom) // 2, right]) == (230, 30, 30)
    full = np.asarray(Image.open(out / "gen256" / "seed0000.png"))
    crop = np.asarray(Image.open(out / "zoom" / "seed0000-face-crop.png"))
    assert np.array_equal(crop, full[top:bottom, left:right])
    row = re.search(r'<div class="zoomrow">(.*?)</div></div>', text, re.S).group(1)
    assert row.index("zoom/seed0000-boxes.png") < row.index("zoom/seed0000-face-crop.png") \
        < row.index("face/seed0000.png") < row.index("zoom/seed0000-hand-crop.png") < row.index("hand/seed0000.png")
    assert "in 0–255 grey levels: face 0.0; hand " in text  # the face patch equals its box here


def test_the_report_says_what_the_run_can_and_cannot_show_with_numbers(report):
    _, _, text = report
    section = text[text.index('id="can-and-cannot"'):text.index("<h2>Stages</h2>")]
    minutes = (2 * 60 + 6 * (len(report[0].stages(report[1], report[0].SMALL)) - 2)) / 60
    assert f"This demo took {minutes:.1f} minutes on this machine's CPU, 2.0 of them training: 4 thousand " \
           "images (kimg)" in section  # 60 s per training stage (from its done file); 3 + 1 kimg
    assert "43 GPU-days (about 61,920 GPU-minutes" in section
    assert "a generator of about 3 thousand weights (the paper's has 28 M parameters, 9,333 times as many)" \
        in section  # G_ema's 3,000 values, not D's
    assert "50,000 kimg in all" in section and "0.0080% of those images (1 in 12,500)" in section
    assert "<b>It can show</b>" in section and "<b>It cannot show</b>" in section
    assert "metrics (on 8 generated and real images)" in section


def test_the_shipped_checkpoint_is_shown_next_to_the_demos_run_with_its_provenance(report):
    demo, out, text = report
    section = text[text.index('id="stage-learned--zoom-hand"'):]
    side_by_side = re.search(r"<figure>(.*?)</figure>", section, re.S).group(1)
    assert side_by_side.index('src="gen256/grid.png"') < side_by_side.index('src="learned-gen32/grid.png"') \
        < side_by_side.index('src="learned-gen256/grid.png"')
    assert '<img src="learned-gen32/grid.png" width="340" height="340"' in side_by_side  # 96 px: enlarged
    assert "command: just learn, commit: abc1234, stage1 kimg: 61.5, stage2 kimg: 11.2" in section
    assert "learned-zoom/seed0000-boxes.png" in section and "learned-face/seed0000.png" in section
    assert "in 0–255 grey levels: face 0.0" in section  # its face patch is exactly its box here
    assert "learned.safetensors, made by <code>just learn</code> (61.5 + 11.2 kimg" in text
    learned = [s for s in demo.stages(out, demo.SMALL) if s.name.startswith("learned")]
    assert [s.name for s in learned] == ["learned: generate r", "learned: generate 8r", "learned: zoom face",
                                         "learned: zoom hand"]
    assert all(str(demo.LEARNED) in s.command for s in learned)


def test_the_report_in_a_browser(report, tmp_path):
    """Headless Chromium loads every image, finds every caption, and its screenshot is not blank."""
    spec = importlib.util.spec_from_file_location("report_check", ROOT / "scripts" / "report_check.py")
    report_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report_check)
    binary = report_check.find_chromium()
    if binary is None:
        pytest.skip(report_check.INSTALL_HINT)
    _, out, _ = report
    shot = tmp_path / "report.png"
    found, problems = report_check.check_report(out / "report.html", shot, binary)
    assert problems == [], problems
    assert found["images"] >= 8 and found["broken"] == [] and found["uncaptioned"] == 0
    assert Image.open(shot).size[0] == report_check.WIDTH


def test_the_browser_check_finds_a_missing_image_and_a_missing_caption(report, tmp_path):
    spec = importlib.util.spec_from_file_location("report_check", ROOT / "scripts" / "report_check.py")
    report_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report_check)
    binary = report_check.find_chromium()
    if binary is None:
        pytest.skip(report_check.INSTALL_HINT)
    _, out, text = report
    broken = text.replace('src="preview.png"', 'src="no-such.png"', 1).replace("<figcaption>", "<p>", 1)
    page = out / "broken.html"
    page.write_text(broken)
    _, problems = report_check.check_report(page, tmp_path / "broken.png", binary)
    assert "image does not load: no-such.png" in problems
    assert "1 figure(s) without a caption" in problems


def test_a_newcomer_starts_with_the_shipped_checkpoints_people_on_top(report):
    _, _, text = report
    top = text[text.index('id="start-here"'):text.index('id="can-and-cannot"')]
    assert text.index('id="start-here"') < text.index("<h2>Stages</h2>")
    first = re.search(r"<figure>(.*?)</figure>", top, re.S).group(1)  # Figure 1 of the report
    assert "<b>Figure 1.</b> The shipped checkpoint: seeds " in first
    assert first.index('src="learned-gen32/grid.png"') < first.index('src="learned-gen256/grid.png"')
    for anchor in ("stage-learned--zoom-hand", "stage-MST-vs-truth", "stage-zoom--hand", "can-and-cannot"):
        assert f'href="#{anchor}"' in top and f'id="{anchor}"' in text, anchor


def test_loss_plots_have_labelled_axes_and_terms_that_are_off_are_listed_not_drawn(report):
    _, _, text = report
    section = text[text.index('id="stage-train-stage-2"'):text.index('id="stage-generate-4r"')]
    plots = re.findall(r"<svg .*?</svg>", section, re.S)
    assert [re.search(r'aria-label="([^"]+) against the step"', p).group(1) for p in plots] == ["D/global", "G/adv"]
    for plot in plots:
        assert ">step</text>" in plot and ">loss</text>" in plot  # the axes' titles
        assert ">1 (0.25 kimg)</text>" in plot and ">4 (1 kimg)</text>" in plot  # x ticks: step and kimg
    assert "<li>D/consistency: λ_cr = 0: logged, not trained on</li>" in section
    assert "<li>G/pixel_lpips: LPIPS is not used in this run; its pixel loss: L1 only (LPIPS off)</li>" in section
    stage1 = text[text.index('id="stage-train-stage-1"'):text.index('id="stage-train-stage-2"')]
    assert "<li>G/pixel_lpips: 0 at every step</li>" in stage1 and "D/consistency against the step" in stage1


def test_precision_and_recall_of_zero_are_explained_where_they_are_shown(report):
    _, _, text = report
    section = text[text.index('id="stage-evaluate"'):]
    note = section[section.index('<p id="precision-recall">'):]
    assert section.index("<th>Precision ↑</th>") < section.index('<p id="precision-recall">')
    assert "k = 3" in note and "Both are 0.000 here, as expected at this scale: with 8 images a side" in note
