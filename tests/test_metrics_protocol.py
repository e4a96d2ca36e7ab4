"""`uh-eval --protocol paper` on the tiny preset (r = 32): what is rendered, at which sizes and
scales, against which real images, and VGG16 features for precision/recall."""

from __future__ import annotations

import hashlib
import json
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from metrics_helpers import NvidiaLikeVGG16, PatternGenerator, PoolFeatures, body_keypoints, render_pattern
from typer.testing import CliRunner

from mst_pipeline.shards.writer import ShardWriter, encode_sample, write_manifest
from uh_train.format.geometry import density, image_region, scale_translate
from uh_train.metrics import EvalConfig, MetricsError, evaluate, fakes, patches
from uh_train.metrics.protocol import native_size, paper_sizes

R = 32  # the tiny preset's patch resolution
# source -> (kind, density in px per full-body unit, image side). With r = 32 the paper protocol
# renders at 8r = 256, compares at 4r = 128 and takes the HR full-body set as full images >= 128
# dense: "hr_full" (128, like SHHQ-HR's 1024 for r = 256), not "lr_full" (64). A patch at s = 8
# spans density / 8 source pixels: 20 for "sparse_upper" (< r: the fake is downsampled to 20 px),
# 80 for "dense_upper".
SOURCES = {"hr_full": ("full", 128, 128), "lr_full": ("full", 64, 64),
           "sparse_upper": ("upper", 160, 96), "dense_upper": ("upper", 640, 384)}


def _write_sources(folder, n: int = 4):
    for source, (kind, dens, side) in SOURCES.items():
        offset = 0.0 if kind == "full" else 0.3
        H = scale_translate(1 / dens, 1 / dens, offset, 0.1 if kind == "upper" else 0.0)
        image = render_pattern(H, side, side)
        region = image_region(H, side, side)
        with ShardWriter(folder, source, update_manifest=False) as writer:
            for i in range(n):
                kp = body_keypoints(np.random.default_rng([i, len(source)]), region)
                if kind == "upper":  # keypoints well inside the crop, so s = 8 patches are covered
                    kp["body"][:, :2] = np.random.default_rng([i, 7]).uniform(0.4, 0.55, size=(25, 2))
                    kp["body"][:, 2] = 1.0
                fields = {"kind": kind, "tier": "HR", "H": H, "region": region, "density": density(H, side, side),
                          "keypoints": kp, "smpl": None, "fit": None,
                          "orig": {"path": f"{source}/{i}.png", "sha256": hashlib.sha256(bytes([i])).hexdigest(),
                                   "width": side, "height": side}}
                writer.write(encode_sample(source, f"s{i}", image, fields, ext="png"))
    write_manifest(folder)
    return folder


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return _write_sources(tmp_path_factory.mktemp("protocol"))


class Recording(PoolFeatures):
    """Pool features that remember the size of every image batch they see."""

    def __init__(self) -> None:
        self.sizes: list[tuple[int, int]] = []
        self.images: list[torch.Tensor] = []

    def __call__(self, images):
        x = torch.as_tensor(images)
        self.sizes += [tuple(x.shape[2:])] * len(x)
        self.images.append(x.clone())
        return super().__call__(x)


class RenderingPattern(PatternGenerator):
    """The analytic pattern generator with the one-pass whole-image render of the paper protocol."""

    def __init__(self, res: int = R, shift: float = 0.0) -> None:
        super().__init__(res, shift)
        self.renders: list[int] = []

    def render(self, z, size):
        self.renders.append(size)
        c = (np.arange(size) + 0.5) / size
        gx, gy = np.meshgrid(c, c)
        full = np.stack([gx, gy], axis=-1)[None].repeat(len(z), 0) + self.shift
        from metrics_helpers import pattern

        return torch.from_numpy(pattern(full) * 2 - 1).permute(0, 3, 1, 2).float()


def _paper(*metrics, n=4, **kw) -> EvalConfig:
    return EvalConfig(metrics=metrics, n=n, batch=4, protocol="paper", **kw)


def test_paper_sizes_are_the_papers_2048_and_1024_px_scaled_to_r():
    paper = paper_sizes(256)
    assert (paper.render_size, paper.fid_size, paper.hr_min_density, paper.patch_scale) == (2048, 1024, 1024, 8)
    tiny = paper_sizes(R)
    assert (tiny.render_size, tiny.fid_size, tiny.hr_min_density, tiny.patch_scale) == (256, 128, 128, 8)
    assert native_size(1024, 8, 256) == 128 and native_size(4096, 8, 256) == 256 and native_size(160, 8, 32) == 20


def test_paper_fid_renders_the_real_tiny_generator_in_one_pass_at_8r_and_compares_at_4r(shards):
    from uh_train.generate import random_generator

    G = random_generator("tiny", 0, "cpu")
    assert G.img_resolution == R
    passes = []
    synthesis = G.synthesis.forward

    def recorded(ws, transform=None, canvas=1, update_emas=False):
        out = synthesis(ws, transform, canvas, update_emas)
        passes.append({"transform": transform.detach().clone(), "canvas": canvas, "out": out.detach().clone()})
        return out

    G.synthesis.forward = recorded
    feats = Recording()
    result = evaluate(fakes.GeneratorSampler(G), [shards], _paper("fid", n=2), feats)
    # Real side: only the HR full-body images (hr_full, 128 px dense), at 4r = 128 px, not magnified.
    assert result["fid"]["n_real"] == 2 and result["fid"]["real_upsampled"] == 0
    # Generated side: one synthesis pass per batch, on an 8x canvas with T((0.5, 0.5), s = 8): the
    # whole image at 8r = 256 px ...
    assert len(passes) == 1 and passes[0]["canvas"] == 8
    assert tuple(passes[0]["out"].shape) == (2, 3, 256, 256)
    expected = torch.tensor([[1 / 8, 0, 0], [0, 1 / 8, 0], [0, 0, 1]]).expand(2, 3, 3)
    torch.testing.assert_close(passes[0]["transform"], expected)
    # ... downsampled (antialiased) to 4r = 128 px before the features.
    assert feats.sizes == [(128, 128)] * 4  # 2 real, then 2 generated
    downsampled = fakes.to_uint8(F.interpolate(passes[0]["out"], size=(128, 128), mode="bilinear", antialias=True))
    assert (feats.images[-1].int() - downsampled.int()).abs().max() <= 1
    assert result["protocol"] == {**paper_sizes(R).describe()} and result["fid"]["render_size"] == 256


def test_paper_fid_uses_only_the_hr_full_body_set(shards, tmp_path):
    real = list(patches.full_images([shards], 128, n=100, min_density=paper_sizes(R).hr_min_density))
    assert len(real) == 4 and all(p.key.startswith("hr_full") for p in real)
    good = evaluate(RenderingPattern(), [shards], _paper("fid"), PoolFeatures())
    bad = evaluate(RenderingPattern(shift=0.1), [shards], _paper("fid"), PoolFeatures())
    assert good["fid"]["value"] < 0.05 * bad["fid"]["value"]
    folder = tmp_path / "lr"
    _write_sources(folder, n=2)
    for tar in folder.glob("hr_full-*.tar"):
        tar.unlink()
    write_manifest(folder)
    with pytest.raises(MetricsError, match="at least 128 px dense"):
        evaluate(RenderingPattern(), [folder], _paper("fid", n=2), PoolFeatures())


def test_paper_pfid_takes_s8_patches_with_uniform_centres_over_the_hr_set_and_replays_them(shards):
    gen, feats = RenderingPattern(), Recording()
    result = evaluate(gen, [shards], _paper("pfid", n=40, seed=3), feats)
    real = list(patches.uniform_patches([shards], R, 40, seed=3, scale=8.0, min_density=128))
    assert all(p.key.startswith("hr_full") for p in real)
    T = np.stack([p.transform for p in real])
    np.testing.assert_allclose(np.concatenate(gen.calls), T, atol=1e-6)  # fakes at exactly the real T
    assert np.allclose(T[:, 0, 0], 1 / 8) and np.allclose(T[:, 1, 1], 1 / 8)
    centres = T[:, :2, 2] + 0.5
    assert centres.min() >= 1 / 16 - 1e-9 and centres.max() <= 15 / 16 + 1e-9
    assert (centres.min(axis=0) < 0.3).all() and (centres.max(axis=0) > 0.7).all()  # spread over the square
    # hr_full has 128 / 8 = 16 px across an s = 8 patch: reals at 16 px, fakes downsampled to 16 px.
    assert set(feats.sizes) == {(16, 16)} and len(feats.sizes) == 80
    assert result["pfid"]["size_max"] == 16 and result["pfid"]["fake_downsampled"] == 40
    assert result["pfid"]["scale_min"] == pytest.approx(8) == result["pfid"]["scale_max"]
    bad = evaluate(RenderingPattern(shift=0.04), [shards], _paper("pfid", n=40, seed=3), PoolFeatures())
    assert result["pfid"]["value"] < 0.05 * bad["pfid"]["value"]


def test_paper_kfid_downsamples_the_fake_to_a_sparse_real_patch_instead_of_magnifying_the_real(shards):
    cfg = _paper("kfid", n=6, seed=1)
    real = list(patches.keypoint_patches([shards], R, 6, seed=1, native=True))
    by_source: dict[str, set[int]] = {}
    for p in real:
        by_source.setdefault(p.key.split("/")[0], set()).add(p.size)
    # density / 8 source pixels across an s = 8 patch, capped at r: never magnified.
    assert by_source == {"hr_full": {16}, "lr_full": {8}, "sparse_upper": {20}, "dense_upper": {R}}
    assert not any(p.upsampled for p in real)
    sparse = [p for p in real if p.key.startswith("sparse_upper")]
    # The fake replaying a sparse real patch is rendered at r at its T, then downsampled to 20 px,
    # and then shows what the real one shows.
    gen = RenderingPattern()
    T = np.stack([p.transform for p in sparse])
    sizes = np.array([p.size for p in sparse])
    (fake,) = list(fakes.patch_batches(gen, T, seed=0, batch=len(T), sizes=sizes))
    assert tuple(fake.shape[2:]) == (20, 20) and all(c.shape[0] == len(T) for c in gen.calls)
    assert np.abs(fake.numpy().astype(float) - np.stack([p.image for p in sparse]).astype(float)).mean() < 3.0

    # The paper protocol's kFID takes its reals from the HR full-body set only (as FID and pFID).
    hr = list(patches.keypoint_patches([shards], R, 6, seed=1, min_density=128, native=True, kinds=("full",)))
    assert hr and {p.key.split("/")[0] for p in hr} == {"hr_full"}
    feats = Recording()
    result = evaluate(RenderingPattern(), [shards], cfg, feats)
    groups = result["kfid"]["groups"].values()
    assert sum(g["n"] for g in groups) == len(hr)
    assert sum(g["fake_downsampled"] for g in groups) == sum(p.size < R for p in hr) == len(hr)
    assert min(g["size_min"] for g in groups) == 16 and sum(g["real_upsampled"] for g in groups) == 0
    # Each real patch and its fake reach the features at the real's size.
    assert sorted(feats.sizes) == sorted([(p.size, p.size) for p in hr] * 2)
    assert all(np.allclose(t[:, 0, 0], 1 / 8) for t in gen.calls)
    bad = evaluate(RenderingPattern(shift=0.04), [shards], cfg, PoolFeatures())
    assert result["kfid"]["mean"] < 0.05 * bad["kfid"]["mean"]


def test_quick_kfid_still_magnifies_sparse_real_patches(shards):
    result = evaluate(RenderingPattern(), [shards], EvalConfig(metrics=("kfid",), n=6, seed=1), PoolFeatures())
    groups = result["kfid"]["groups"].values()
    assert all(g["size_min"] == R for g in groups if g["n"]) and sum(g["real_upsampled"] for g in groups) > 0
    assert result["protocol"]["name"] == "quick"


def test_paper_protocol_fixes_its_sizes():
    with pytest.raises(MetricsError, match="--fid-size"):
        _paper("fid", fid_res=64)
    with pytest.raises(MetricsError, match="--kfid-min-density"):
        _paper("kfid", kfid_min_density=256.0)
    with pytest.raises(MetricsError, match="unknown protocol"):
        EvalConfig(protocol="fast")


# ---------------------------------------------------------------------------------------------
# VGG16 features for precision/recall


def small_vgg() -> torch.nn.Module:
    """torchvision's VGG layout (features, avgpool, classifier) in miniature, 4096-d fc2."""
    from torch import nn

    class Small(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
            self.avgpool = nn.AdaptiveAvgPool2d(2)
            self.classifier = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Dropout(), nn.Linear(8, 4096), nn.ReLU(),
                                            nn.Dropout(), nn.Linear(4096, 10))

    return Small()


def test_nvidia_vgg16_file_gives_the_precision_recall_features(shards, tmp_path):
    from uh_train.metrics.vgg import VGG16Features

    path = tmp_path / "vgg16.pt"
    torch.jit.script(NvidiaLikeVGG16()).save(str(path))
    vgg = VGG16Features(path)
    calls = []

    class Counting(VGG16Features):
        def __call__(self, images):
            calls.append(tuple(torch.as_tensor(images).shape))
            return super().__call__(images)

    counting = Counting(path)
    result = evaluate(RenderingPattern(), [shards], _paper("fid", "pr", n=4), PoolFeatures(), pr_features=counting)
    assert vgg.describe()["kind"] == "nvidia-vgg16"
    assert result["pr"]["features"]["network"] == "vgg16" and result["pr"]["features"]["file"] == "vgg16.pt"
    assert calls == [(4, 3, 128, 128), (4, 3, 128, 128)]  # the 4r real and generated images
    assert result["pr"]["k"] == 3 and result["pr"]["resolution"] == 128
    without = evaluate(RenderingPattern(), [shards], _paper("pr", n=4), PoolFeatures())
    assert without["pr"]["features"]["network"] == "inception"


def test_torchvision_vgg16_state_dict_is_loaded_without_running_code(tmp_path, monkeypatch):
    from uh_train.metrics import vgg

    monkeypatch.setattr(vgg, "torchvision_vgg16", small_vgg)
    torch.manual_seed(0)
    reference = small_vgg().eval()
    torch.save(reference.state_dict(), tmp_path / "vgg16-397923af.pth")
    features = vgg.VGG16Features(tmp_path / "vgg16-397923af.pth")
    assert features.describe()["kind"] == "torchvision-vgg16"
    images = torch.randint(0, 256, (2, 3, 40, 40), dtype=torch.uint8)
    out = features(images)
    x = F.interpolate(images.float() / 255, size=(224, 224), mode="bilinear", antialias=True)
    x = (x - torch.tensor(vgg.IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(vgg.IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = reference.classifier[:5](reference.avgpool(reference.features(x)).flatten(1))
    assert out.shape == (2, 4096)
    np.testing.assert_allclose(out, expected.double().numpy(), atol=1e-5)

    state = reference.state_dict()
    state.pop("classifier.3.weight")
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(MetricsError, match="does not hold torchvision's VGG16 weights"):
        vgg.VGG16Features(tmp_path / "partial.pth")


class _Payload:
    def __reduce__(self):
        import pathlib

        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def test_a_vgg16_pickle_that_would_run_code_is_refused(tmp_path):
    from uh_train.metrics.vgg import VGG16Features

    payload = _Payload()
    payload.marker = str(tmp_path / "ran")
    (tmp_path / "vgg16.pkl").write_bytes(pickle.dumps({"G": payload}))
    with pytest.raises(MetricsError, match="without running code"):
        VGG16Features(tmp_path / "vgg16.pkl")
    assert not (tmp_path / "ran").exists()


def test_cli_paper_protocol_writes_protocol_sizes_and_features(shards, tmp_path):
    from metrics_helpers import save_nvidia_like

    from uh_train.evaluate import app

    inception = save_nvidia_like(tmp_path / "inception-like.pt")
    vgg_path = tmp_path / "vgg16.pt"
    torch.jit.script(NvidiaLikeVGG16()).save(str(vgg_path))
    args = ["--init", "random", "--preset", "tiny", "--shards", shards, "--metrics", "fid,pr", "--n", "4",
            "--inception", inception, "--no-cache", "--batch", "4"]
    result = CliRunner().invoke(app, [str(a) for a in [*args, "--protocol", "paper", "--vgg16", vgg_path,
                                                       "--out", tmp_path / "paper"]])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "paper" / "metrics.json").read_text())
    assert record["protocol"]["name"] == "paper"
    assert (record["protocol"]["render_size"], record["protocol"]["fid_size"]) == (256, 128)
    assert record["fid"]["resolution"] == 128 and record["pr"]["features"]["network"] == "vgg16"
    table = (tmp_path / "paper" / "metrics.md").read_text()
    assert "protocol: paper (r = 32)" in table and "256 px" in table and "vgg16 features" in table
    bad = CliRunner().invoke(app, [str(a) for a in [*args, "--protocol", "paper", "--fid-res", "64", "--vgg16",
                                                    vgg_path, "--out", tmp_path / "x"]])
    assert bad.exit_code == 2 and "uh-eval: error: --fid-size cannot be set with --protocol paper" in bad.output
    unknown = CliRunner().invoke(app, [str(a) for a in [*args, "--protocol", "fast", "--out", tmp_path / "y"]])
    assert unknown.exit_code == 2 and "unknown protocol" in unknown.output


def test_paper_pfid_centres_stay_on_the_image_of_an_aligned_portrait(tmp_path):
    """A 1:2 portrait covers only the strip x in [0.25, 0.75]: no s = 8 patch lies in the padding."""
    side_h, side_w = 256, 128
    H = scale_translate(1 / side_h, 1 / side_h, 0.25, 0.0)
    image = render_pattern(H, side_w, side_h)
    region = image_region(H, side_w, side_h)
    with ShardWriter(tmp_path, "shhq", update_manifest=False) as writer:
        for i in range(3):
            fields = {"kind": "full", "tier": "HR", "H": H, "region": region,
                      "density": density(H, side_w, side_h), "keypoints": None, "smpl": None, "fit": None,
                      "orig": {"path": f"shhq/{i}.png", "sha256": hashlib.sha256(bytes([i])).hexdigest(),
                               "width": side_w, "height": side_h}}
            writer.write(encode_sample("shhq", f"s{i}", image, fields, ext="png"))
    write_manifest(tmp_path)
    real = list(patches.uniform_patches([tmp_path], R, 60, seed=0, scale=8.0, min_density=128))
    x = np.array([p.transform[0, 2] + 0.5 for p in real])
    assert x.min() >= 0.25 + 1 / 16 - 1e-9 and x.max() <= 0.75 - 1 / 16 + 1e-9
    assert x.min() < 0.35 and x.max() > 0.65  # spread over the strip


def test_paper_protocol_stops_without_vgg16_for_precision_recall_unless_told(shards, tmp_path):
    from metrics_helpers import save_nvidia_like

    from uh_train.evaluate import app

    inception = save_nvidia_like(tmp_path / "inception-like.pt")
    args = ["--init", "random", "--preset", "tiny", "--shards", shards, "--metrics", "pr", "--n", "4",
            "--inception", inception, "--no-cache", "--batch", "4", "--protocol", "paper"]
    stopped = CliRunner().invoke(app, [str(a) for a in [*args, "--out", tmp_path / "stopped"]])
    assert stopped.exit_code == 2 and "VGG16" in stopped.output and "--inception-pr" in stopped.output
    assert not (tmp_path / "stopped" / "metrics.json").exists()
    ran = CliRunner().invoke(app, [str(a) for a in [*args, "--inception-pr", "--out", tmp_path / "ran"]])
    assert ran.exit_code == 0, ran.output
    record = json.loads((tmp_path / "ran" / "metrics.json").read_text())
    assert record["pr"]["features"]["network"] != "vgg16"
