"""Bad arguments and refused files end every command line with a short, specific error: no
traceback, nothing written, the option or file named."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from typer.testing import CliRunner

from mst_pipeline.cli import app as mst
from uh_train.evaluate import app as uh_eval
from uh_train.generate import app as uh_generate
from uh_train.training.cli import app as uh_train

runner = CliRunner(env={"COLUMNS": "120"})  # error boxes wrap at the terminal width, not at 80


class _Evil:
    def __reduce__(self):
        return os.system, ("touch pwned",)


@pytest.fixture
def files(tmp_path):
    (tmp_path / "shards").mkdir()
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"G_ema": _Evil()}))
    torch.save({"state_dict": _Evil()}, tmp_path / "evil.ckpt")
    (tmp_path / "images").mkdir()
    return tmp_path


def _short_error(result, *expected: str) -> None:
    text = result.output
    assert result.exit_code in (1, 2), (result.exit_code, text)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in text and "weights_only=False" not in text and "weights_only` set to `False" not in text
    assert len([line for line in text.splitlines() if line.strip()]) <= 8, text
    flat = " ".join(text.replace("│", " ").split())
    for e in expected:
        assert e in flat, (e, text)


BAD_ARGUMENTS = [
    (uh_generate, ["--init", "random", "--scale", "0", "--patch", "0.5,0.5", "--out", "{t}/o"], "--scale"),
    (uh_generate, ["--init", "random", "--size", "-64", "--out", "{t}/o"], "--size"),
    (uh_generate, ["--init", "random", "--truncation", "nan", "--out", "{t}/o"], "--truncation"),
    (uh_generate, ["--init", "random", "--patch", "2,0.5", "--out", "{t}/o"], "--patch"),
    (uh_generate, ["--init", "random", "--preset", "huge", "--out", "{t}/o"], "huge"),
    (uh_generate, ["--init", "random", "--device", "gpu0", "--out", "{t}/o"], "--device"),
    (uh_generate, ["--init", "random", "--out", "{t}/a_file"], "is a file"),
    (uh_generate, ["import-snapshot", "{t}/evil.pkl", "{t}/shards"], "is a folder"),
    (uh_eval, ["--init", "random", "--shards", "{t}/shards", "--batch", "0", "--out", "{t}/o"], "--batch"),
    (uh_eval, ["--init", "random", "--shards", "{t}/shards", "--n", "-1", "--out", "{t}/o"], "--n"),
    (uh_eval, ["--init", "random", "--shards", "{t}/shards", "--out", "{t}/a_file"], "is a file"),
    (uh_train, ["run", "--shards", "{t}/shards", "--out", "{t}/o", "--res", "7"], "power of two"),
    (uh_train, ["run", "--shards", "{t}/shards", "--out", "{t}/o", "--batch", "0"], "--batch"),
    (uh_train, ["run", "--shards", "{t}/shards", "--out", "{t}/o", "--kimg", "-1"], "--kimg"),
    (uh_train, ["run", "--shards", "{t}/shards", "--out", "{t}/o", "--gamma", "inf"], "--gamma"),
    (uh_train, ["run", "--shards", "{t}/shards", "--out", "{t}/o", "--mix", "a=-1"], "--mix"),
    (uh_train, ["run", "--shards", "{t}/shards", "--out", "{t}/a_file"], "is a file"),
    (uh_train, ["run", "--shards", "{t}/shards", "--out", "{t}/a_file/o"], "which is a file"),
    (uh_train, ["run", "--shards", "{t}/shards", "--out", "{t}/o", "--kimg", "1e306"], "--kimg 1e+306 is not in"),
    (uh_train, ["run", "--shards", "{t}/shards", "--out", "{t}/o", "--res", "512"], "--res 512 is beyond preset"),
    (uh_train, ["run", "--shards", "{t}/shards", "--out", "{t}/o", "--batch", "2", "--batch-gpu", "16"],
     "--batch-gpu 16 must divide --batch 2"),
    (uh_train, ["run", "--shards", "{t}/shards", "--out", "{t}/o", "--batch", "8", "--batch-gpu", "3"],
     "--batch-gpu 3 must divide"),
    (uh_train, ["run", "--shards", "{t}/shards", "--shards", "{t}/shards/", "--out", "{t}/o"], "same folder"),
    (uh_train, ["run", "--shards", "{t}/shards", "--out", "{t}/o", "--view", "face:s_min=1e300"], "s_min"),
    (uh_train, ["run", "--shards", "{t}/shards", "--out", "{t}/o", "--view", "face:jitter=inf"], "jitter"),
    (uh_train, ["run", "--shards", "{t}/shards", "--out", "{t}/o", "--view", "face:s_min=20"], "largest scale"),
    (uh_eval, ["--init", "random", "--shards", "{t}/shards", "--out", "{t}/a_file/o"], "which is a file"),
    (uh_eval, ["--init", "random", "--shards", "{t}/shards", "--out", "{t}/o", "--cache", "{t}/a_file/c"],
     "which is a file"),
    (uh_generate, ["--init", "random", "--out", "{t}/a_file/o"], "which is a file"),
    (uh_generate, ["--init", "random", "--preset", "tiny", "--size", "10000000", "--out", "{t}/o"],
     "--size: 10000000 needs about"),
    (uh_generate, ["--init", "random", "--seeds", "0-4000000000", "--out", "{t}/o"], "at most 10000 per run"),
    (uh_generate, ["--init", "random", "--seeds", "1,4294967296", "--out", "{t}/o"], "outside [0, 2^32)"),
    (mst, ["synthetic", "{t}/o", "--res", "0"], "--res"),
    (mst, ["synthetic", "{t}/o", "--n", "0"], "--n"),
    (mst, ["synthetic", "{t}/a_file"], "is a file"),
    (mst, ["align", "{t}/images", "--out", "{t}/a_file"], "is a file"),
    (mst, ["align", "{t}/images", "--batch-size", "0"], "--batch-size"),
    (mst, ["align", "{t}/images", "--out", "{t}/o", "--source", "___"], "--source"),
    (mst, ["align", "{t}/images", "--out", "{t}/o", "--keypoints-dir", "{t}/missing"], "not an existing folder"),
    (mst, ["align", "{t}/images", "--out", "{t}/o", "--overlay", "{t}/a_file"], "is a file"),
    (mst, ["align", "{t}/images", "--iterations", "0"], "--iterations"),
    (mst, ["align", "{t}/images", "--max-count", "0"], "--max-count"),
    (mst, ["align", "{t}/images", "--prior-target", "mean"], "--prior-target must be one of reconstruct, complete"),
    (mst, ["preview", "{t}/shards", "--tile", "0"], "--tile"),
    (mst, ["preview", "{t}/shards", "--out", "{t}/shards"], "is a folder"),
    (mst, ["fit-prior", "{t}/a_file", "--lr", "0"], "--lr"),
    (mst, ["fit-prior", "{t}/a_file", "--epochs", "0"], "--epochs"),
    (mst, ["space", "{t}/images", "--out", "{t}/shards"], "is a folder"),
    (mst, ["render-people", "{t}/o", "--res", "8"], "--res"),
    (mst, ["derive-sr", "{t}/shards", "--out", "{t}/o", "--max-count", "0"], "--max-count"),
    (mst, ["render-hands", "--out", "{t}/o", "--n", "-1"], "--n"),
    (mst, ["render-hands", "--out", "{t}/o", "--res", "0"], "--res"),
    (mst, ["render-hands", "--out", "{t}/o", "--timeout", "nan"], "--timeout"),
    (mst, ["render-hands", "--out", "{t}/o", "--timeout", "-1"], "--timeout"),
    (mst, ["render-hands", "--out", "{t}/o", "--workers", "-4"], "--workers"),
    (mst, ["render-hands", "--out", "{t}/o", "--samples", "0"], "--samples"),
    (mst, ["render-hands", "--out", "{t}/a_file"], "is a file"),
]


@pytest.mark.parametrize(("cli", "args", "expected"), BAD_ARGUMENTS,
                         ids=[" ".join(a).replace("{t}/", "") for _, a, _ in BAD_ARGUMENTS])
def test_a_bad_argument_is_a_short_error_naming_it_and_writes_nothing(files, cli, args, expected):
    result = runner.invoke(cli, [a.format(t=files) for a in args])
    _short_error(result, expected)
    assert not (files / "o").exists()


def test_a_refused_snapshot_pickle_is_one_line_in_uh_generate(files):
    result = runner.invoke(uh_generate, ["--ckpt", str(files / "evil.pkl"), "--out", str(files / "o")])
    _short_error(result, "evil.pkl", "refusing to load global posix.system")
    assert result.exit_code == 1 and not (files / "pwned").exists()


def test_a_refused_snapshot_pickle_is_one_line_in_import_snapshot(files):
    for cli, args in ((uh_generate, ["import-snapshot"]), (uh_train, ["import-snapshot"])):
        result = runner.invoke(cli, [*args, str(files / "evil.pkl"), str(files / "G.safetensors")])
        _short_error(result, "evil.pkl", "refus")
        assert result.exit_code == 1 and not (files / "G.safetensors").exists()


def test_a_refused_teacher_is_one_line_in_uh_train(files):
    result = runner.invoke(uh_train, ["run", "--shards", str(files / "shards"), "--out", str(files / "run"),
                                      "--stage", "2", "--teacher", str(files / "evil.pkl"), "--device", "cpu"])
    _short_error(result, "evil.pkl", "refusing to load global posix.system")
    assert result.exit_code == 1


def test_a_refused_generator_is_one_line_in_uh_eval(files):
    result = runner.invoke(uh_eval, ["--ckpt", str(files / "evil.pkl"), "--shards", str(files / "shards"),
                                     "--out", str(files / "o")])
    _short_error(result, "evil.pkl", "refusing to load global posix.system")


def test_a_refused_prior_names_the_file_and_never_suggests_unsafe_loading(files):
    from mst_pipeline.fitting.prior import CheckpointError, load_prior

    with pytest.raises(CheckpointError) as info:
        load_prior(files / "evil.ckpt")
    message = str(info.value)
    assert "\n" not in message and "evil.ckpt" in message and "posix.system" in message
    assert "weights_only" not in message and "nothing in it was run" in message
    truncated = files / "cut.ckpt"
    truncated.write_bytes((files / "evil.ckpt").read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cut.ckpt: truncated or corrupt file") as info:
        load_prior(truncated)
    assert "\n" not in str(info.value)


def test_align_with_a_refused_prior_is_a_short_error(files):
    from PIL import Image

    Image.new("RGB", (32, 64)).save(files / "images" / "p.png")
    result = runner.invoke(mst, ["align", str(files / "images"), "--out", str(files / "o"),
                                 "--prior", str(files / "evil.ckpt")])
    _short_error(result, "evil.ckpt", "refused")
    assert result.exit_code == 1


HOLD_OUT = "import sys, time\nfrom uh_train.format.locks import run_lock\nwith run_lock(sys.argv[1], 'uh-train'):\n" \
    "    print('locked', flush=True)\n    time.sleep(60)\n"


def test_uh_eval_on_an_out_in_use_stops_at_once_naming_the_other_run(files):
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", HOLD_OUT, str(files / "o")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = runner.invoke(uh_eval, ["--init", "random", "--metrics", "consistency", "--n", "1",
                                         "--out", str(files / "o")])
        _short_error(result, "in use by another run", f"pid {holder.pid}")
        assert not (files / "o" / "metrics.json").exists()
    finally:
        holder.kill()
        holder.wait()


def test_silent_mistakes_now_speak_in_one_line(tmp_path):
    """Stage 2 without --teacher, a shard folder without shards, and a CUDA device where torch sees none
    each stop before any work with one line saying what to do; --no-teacher lets stage 2 run without."""
    from mst_pipeline.synthesis.synthetic import write_synthetic

    uh_train_app = uh_train
    shards = tmp_path / "shards"
    write_synthetic(shards, n=4, res=64, seed=0, max_count=4)
    runner = CliRunner()
    no_teacher = runner.invoke(uh_train_app, ["run", "--shards", str(shards), "--out", str(tmp_path / "s2"),
                                              "--stage", "2", "--kimg", "0.004", "--batch", "4", "--lpips", "off"])
    assert no_teacher.exit_code == 2 and "stage 2 needs --teacher" in no_teacher.output
    assert "--no-teacher" in no_teacher.output and not (tmp_path / "s2" / "run.json").exists()
    allowed = runner.invoke(uh_train_app, ["run", "--shards", str(shards), "--out", str(tmp_path / "s2"),
                                           "--stage", "2", "--kimg", "0.004", "--batch", "4", "--lpips", "off",
                                           "--no-teacher"])
    assert allowed.exit_code == 0, allowed.output

    (tmp_path / "empty").mkdir()
    empty = runner.invoke(uh_train_app, ["run", "--shards", str(tmp_path / "empty"), "--out", str(tmp_path / "e")])
    assert empty.exit_code == 1 and "holds no shards" in empty.output and "mst align" in empty.output
    assert not (tmp_path / "e" / "run.json").exists()

    if not torch.cuda.is_available():
        gen = runner.invoke(uh_generate, ["--init", "random", "--preset", "tiny", "--seeds", "0", "--size", "32",
                                          "--device", "cuda", "--out", str(tmp_path / "g")])
        assert gen.exit_code == 2 and "no CUDA GPU" in gen.output and "Traceback" not in gen.output
        ev = runner.invoke(uh_eval, ["--init", "random", "--preset", "tiny", "--metrics", "consistency", "--n", "2",
                                     "--device", "cuda", "--out", str(tmp_path / "ev")])
        assert ev.exit_code != 0 and "no CUDA GPU" in ev.output and "Traceback" not in ev.output
        train = runner.invoke(uh_train_app, ["run", "--shards", str(shards), "--out", str(tmp_path / "t"),
                                             "--device", "cuda"])
        assert train.exit_code == 2 and "no CUDA GPU" in train.output
