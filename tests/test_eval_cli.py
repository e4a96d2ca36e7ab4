"""`uh-eval` end to end on a small synthetic shard set, and its one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from metrics_helpers import save_nvidia_like, write_pattern_shards
from typer.testing import CliRunner

from uh_train.evaluate import app

runner = CliRunner()


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from mst_pipeline.synthesis.synthetic import write_synthetic

    folder = tmp_path_factory.mktemp("synthetic")
    write_synthetic(folder, n=6, res=64, seed=0)
    return folder


@pytest.fixture(scope="module")
def fast_inception(tmp_path_factory):
    """A quick TorchScript file with NVIDIA's calling convention (the real one is slow on a CPU)."""
    return save_nvidia_like(tmp_path_factory.mktemp("inception") / "inception-like.pt")


def _run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_random_tiny_generator_end_to_end_with_all_metrics(synthetic, fast_inception, tmp_path):
    args = ["--init", "random", "--preset", "tiny", "--shards", synthetic, "--metrics", "fid,pfid,kfid,pr",
            "--n", "5", "--out", tmp_path / "out", "--cache", tmp_path / "cache", "--inception", fast_inception,
            "--fid-res", "64"]
    result = _run(*args)
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert record["format"] == "unitedhuman-eval/1" and record["method"] == "random-tiny"
    assert record["protocol"]["name"] == "quick" and record["protocol"]["fid_size"] == 64  # the default protocol
    assert record["pr"]["features"]["network"] == "inception"
    assert record["inception"]["kind"] == "nvidia" and len(record["inception"]["sha256"]) == 64
    assert record["fid"]["value"] > 0 and record["fid"]["n_real"] == 5 and record["fid"]["resolution"] == 64
    assert record["pfid"]["value"] > 0 and record["pfid"]["n"] == 5
    assert set(record["kfid"]["groups"]) == {"face", "neck", "shoulder", "elbow", "hand", "hip", "knee"}
    assert record["kfid"]["mean"] > 0
    assert 0 <= record["pr"]["precision"] <= 1 and 0 <= record["pr"]["recall"] <= 1 and record["pr"]["k"] == 3
    table = (tmp_path / "out" / "metrics.md").read_text()
    assert "| Method | FID ↓ | pFID ↓ | kFID face ↓" in table and "| random-tiny |" in table
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "cache").iterdir()) == ["full", "kfid", "pfid"]

    # Real statistics come from the cache: the run succeeds without the shard tars, with equal values.
    for tar in synthetic.glob("*.tar"):
        tar.rename(tar.with_suffix(".bak"))
    try:
        again = _run(*args[:-8], "--out", tmp_path / "again", "--cache", tmp_path / "cache",
                     "--inception", fast_inception, "--fid-res", "64")
    finally:
        for bak in synthetic.glob("*.bak"):
            bak.rename(bak.with_suffix(".tar"))
    assert again.exit_code == 0, again.output
    second = json.loads((tmp_path / "again" / "metrics.json").read_text())
    for name in ("fid", "pfid"):
        assert second[name]["value"] == pytest.approx(record[name]["value"])
    assert second["kfid"]["mean"] == pytest.approx(record["kfid"]["mean"])


def test_saved_checkpoint_with_the_default_inception(synthetic, tmp_path):
    from uh_train.checkpoint import save_checkpoint
    from uh_train.networks import Generator, get_preset

    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "G.safetensors", {"G_ema": Generator(get_preset("tiny").generator)})
    result = _run("--ckpt", ckpt, "--shards", synthetic, "--metrics", "fid", "--n", "3", "--out", tmp_path / "out",
                  "--no-cache")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert record["method"] == "G" and record["generator"]["checkpoint"] == "G.safetensors"
    assert record["inception"]["file"] == "default_1.pt" and record["fid"]["value"] > 0
    assert "pfid" not in record and "| G |" in (tmp_path / "out" / "metrics.md").read_text()


def _assert_one_line_error(result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("uh-eval: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.output  # after any progress bars
    for word in words:
        assert word in errors[0]


def test_missing_shard_folder(tmp_path, fast_inception):
    result = _run("--init", "random", "--shards", tmp_path / "nowhere", "--out", tmp_path / "o",
                  "--inception", fast_inception)
    _assert_one_line_error(result, "nowhere", "does not exist")


def test_folder_without_manifest(tmp_path, fast_inception):
    (tmp_path / "empty").mkdir()
    result = _run("--init", "random", "--shards", tmp_path / "empty", "--out", tmp_path / "o",
                  "--inception", fast_inception, "--no-cache")
    _assert_one_line_error(result, "manifest.parquet")


def test_shards_without_keypoints_for_kfid(tmp_path, fast_inception):
    folder = write_pattern_shards(tmp_path / "nokp", n=2, keypoints=False)
    result = _run("--init", "random", "--shards", folder, "--metrics", "kfid", "--n", "2", "--out", tmp_path / "o",
                  "--inception", fast_inception, "--no-cache")
    _assert_one_line_error(result, "keypoints")


def test_unreadable_inception_file(synthetic, tmp_path):
    bad = tmp_path / "inception.pt"
    bad.write_bytes(b"garbage")
    result = _run("--init", "random", "--shards", synthetic, "--out", tmp_path / "o", "--inception", bad)
    _assert_one_line_error(result, "inception.pt", "TorchScript")


def test_missing_and_unreadable_checkpoints(synthetic, tmp_path, fast_inception):
    _assert_one_line_error(_run("--ckpt", tmp_path / "none.safetensors", "--shards", synthetic, "--out",
                                tmp_path / "o"), "does not exist")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    _assert_one_line_error(_run("--ckpt", broken, "--shards", synthetic, "--out", tmp_path / "o"),
                           "cannot load a generator")


def test_unknown_metric_and_bad_fid_resolution(synthetic, tmp_path, fast_inception):
    result = _run("--init", "random", "--shards", synthetic, "--metrics", "fid,is", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "unknown metric" in result.output
    result = _run("--init", "random", "--shards", synthetic, "--fid-res", "48", "--out", tmp_path / "o",
                  "--inception", fast_inception)
    _assert_one_line_error(result, "multiple of the patch resolution 32")


def test_precision_recall_on_too_few_real_images_is_a_one_line_error(tmp_path, fast_inception):
    folder = write_pattern_shards(tmp_path / "three", n=3)
    result = _run("--init", "random", "--shards", folder, "--metrics", "pr", "--n", "8", "--out", tmp_path / "o",
                  "--inception", fast_inception, "--no-cache")
    _assert_one_line_error(result, "k=3", "have 3 real")


def test_kfid_for_chosen_groups_only_equals_those_groups_of_the_full_run(synthetic, fast_inception, tmp_path):
    common = ["--init", "random", "--preset", "tiny", "--shards", synthetic, "--metrics", "kfid", "--n", "4",
              "--cache", tmp_path / "cache", "--inception", fast_inception]
    every = _run(*common, "--out", tmp_path / "all")
    chosen = _run(*common, "--out", tmp_path / "chosen", "--kfid-groups", "face,hand")
    assert every.exit_code == 0 and chosen.exit_code == 0, every.output + chosen.output
    full = json.loads((tmp_path / "all" / "metrics.json").read_text())["kfid"]
    part = json.loads((tmp_path / "chosen" / "metrics.json").read_text())["kfid"]
    assert set(part["groups"]) == {"face", "hand"}
    for group in ("face", "hand"):  # the same patches and fakes: a group's value does not depend on the others
        assert part["groups"][group]["value"] == pytest.approx(full["groups"][group]["value"])
    assert part["mean"] == pytest.approx((part["groups"]["face"]["value"] + part["groups"]["hand"]["value"]) / 2)
    bad = _run(*common, "--out", tmp_path / "bad", "--kfid-groups", "face,tail")
    assert bad.exit_code != 0 and "unknown kFID group(s) tail" in bad.output


def test_n_beyond_the_real_images_is_computed_from_those_and_said_everywhere(synthetic, fast_inception, tmp_path):
    common = ["--init", "random", "--preset", "tiny", "--shards", synthetic, "--metrics", "fid", "--no-cache",
              "--inception", fast_inception]
    result = _run(*common, "--n", "64", "--out", tmp_path / "many")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "many" / "metrics.json").read_text())
    assert record["fid"]["n_real"] == 6 and record["fid"]["n_fake"] == 64
    assert record["fewer_than_n"] == ["FID: 6 real full-body images (--n 64), against 64 generated"]
    report = (tmp_path / "many" / "metrics.md").read_text()
    assert "computed from what there was: FID: 6 real full-body images" in report
    assert "uh-eval: note: fewer real samples than --n 64" in result.output
    enough = _run(*common, "--n", "4", "--out", tmp_path / "enough")
    assert enough.exit_code == 0, enough.output
    assert json.loads((tmp_path / "enough" / "metrics.json").read_text())["fewer_than_n"] == []
    assert "note:" not in enough.output and "fewer" not in (tmp_path / "enough" / "metrics.md").read_text()
