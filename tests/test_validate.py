"""`mst validate`: exit 0 on a clean folder, 1 naming each defect class, 2 for unusable arguments."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from mst_pipeline.cli import app
from mst_pipeline.shards.writer import ShardWriter, encode_image, write_manifest
from uh_train.format.geometry import density, image_region, scale_translate
from uh_train.format.spec import meta_defects

from shard_helpers import raw_folder, raw_sample, valid_meta, valid_sample

runner = CliRunner()


def run_validate(folder, *extra):
    result = runner.invoke(app, ["validate", str(folder), *extra])
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return result


def clean_folder(path, n=3):
    with ShardWriter(path, "src", max_count=2) as w:
        for i in range(n):
            w.write(valid_sample("src", f"k{i}", seed=i, mask=(i == 0)))
    return path


def test_clean_folder_exits_zero_with_per_source_table(tmp_path):
    result = run_validate(clean_folder(tmp_path / "ok"))
    assert result.exit_code == 0, result.output
    assert "src" in result.output and "OK" in result.output


def test_json_report_is_machine_readable(tmp_path):
    result = run_validate(clean_folder(tmp_path / "ok"), "--json")
    report = json.loads(result.output)
    assert report["ok"] is True and report["samples"] == 3
    assert report["sources"]["src"]["kinds"] == {"full": 3}


def meta_with(**changes):
    meta = valid_meta()
    for k, v in changes.items():
        if v is KeyError:
            meta.pop(k)
        else:
            meta[k] = v
    return meta


BAD_META = {
    "singular H": (meta_with(H=[[1, 0, 0], [2, 0, 0], [0, 0, 1]]), "singular"),
    "mirroring H": (meta_with(H=np.diag([-1 / 32, 1 / 32, 1.0]).tolist()), "negative determinant"),
    "non-finite H": (meta_with(H=[[float("nan"), 0, 0], [0, 1, 0], [0, 0, 1]]), "non-finite"),
    "H not 3x3": (meta_with(H=[[1, 0], [0, 1]]), "expected [3, 3]"),
    "region out of bounds": (meta_with(region=[[0, 0], [50, 0], [50, 1], [0, 1]]), "sane bounds"),
    "degenerate region": (meta_with(region=[[0, 0], [1, 1], [0.5, 0.5]]), "zero area"),
    "keypoint shape": (meta_with(keypoints={**valid_meta()["keypoints"], "body": [[0, 0, 1]] * 24}),
                       "keypoints.body has shape"),
    "unknown kind": (meta_with(kind="torso"), "kind is 'torso'"),
    "bad tier": (meta_with(tier="XL"), "tier is 'XL'"),
    "missing density": (meta_with(density=KeyError), "density"),
    "wrong format": (meta_with(format="unitedhuman-shard/0"), "format is"),
    "absolute orig path": (meta_with(orig={**valid_meta()["orig"], "path": "/data/x.png"}), "orig.path"),
    "smpl betas length": (meta_with(smpl={**valid_meta()["smpl"], "betas": [0.0] * 3}), "smpl.betas"),
    "recorded size": (meta_with(width=17), "image is 16x32, meta records 17x32"),
    # geometry must agree with H and make sense in full-body space
    "region not H of the corners": (meta_with(region=[[0.3, 0], [0.8, 0], [0.8, 1], [0.3, 1]]),
                                    "region is not H applied to the image corners"),
    "density not from H": (meta_with(density=64.0), "density is 64, H implies 32"),
    "absurd density": (meta_with(density=1e300), "outside the plausible range"),
    "H as strings": (meta_with(H=[[str(x) for x in row] for row in valid_meta()["H"]]), "H has a non-numeric entry"),
    "H with booleans": (meta_with(H=[[True, 0, 0], [0, True, 0], [0, 0, True]]), "H has a non-numeric entry"),
    "H nested deeper": (meta_with(H=[[[1], [0], [0]], [[0], [1], [0]], [[0], [0], [1]]]), "H has a non-numeric"),
    "region as strings": (meta_with(region=[["0", "0"], ["1", "0"], ["1", "1"]]), "region has a non-numeric"),
    "keypoints as strings": (meta_with(keypoints={**valid_meta()["keypoints"], "face": "70 points"}),
                             "keypoints.face is not a numeric array"),
    "H through infinity": (meta_with(H=[[1 / 32, 0, 0.25], [0, 1 / 32, 0], [0, -0.1, 1]]), "through infinity"),
    "image outside full-body space": (meta_with(H=scale_translate(1 / 32, 1 / 32, 1.5, 0).tolist(),
                                                region=image_region(scale_translate(1 / 32, 1 / 32, 1.5, 0),
                                                                    16, 32).tolist()),
                                      "outside full-body space"),
    "huge declared size": (meta_with(width=1 << 20, height=1 << 20), "exceeds"),
}


@pytest.mark.parametrize("case", sorted(BAD_META))
def test_each_metadata_defect_is_named(tmp_path, case):
    meta, expected = BAD_META[case]
    folder = raw_folder(tmp_path / "f", {"src-000-000000.tar": raw_sample(meta=meta)})
    result = run_validate(folder)
    assert result.exit_code == 1
    assert expected in result.output, result.output
    assert "src/a" in result.output and "src-000-000000.tar" in result.output


def test_missing_image_and_missing_meta(tmp_path):
    members = raw_sample("src/a")
    no_image = [m for m in members if not m[0].endswith(".png")]
    no_meta = [(n.replace("src/a", "src/b"), d) for n, d in members if not n.endswith(".json")]
    folder = raw_folder(tmp_path / "f", {"src-000-000000.tar": no_image + no_meta})
    result = run_validate(folder)
    assert result.exit_code == 1
    assert "src/a: no image" in result.output
    assert "src/b: no meta.json" in result.output


def test_meta_that_is_not_json(tmp_path):
    members = [(n, b"{not json" if n.endswith(".json") else d) for n, d in raw_sample()]
    result = run_validate(raw_folder(tmp_path / "f", {"src-000-000000.tar": members}))
    assert result.exit_code == 1 and "not valid JSON" in result.output


def test_image_that_does_not_decode(tmp_path):
    folder = raw_folder(tmp_path / "f", {"src-000-000000.tar": raw_sample(image=b"\x89PNG garbage")})
    result = run_validate(folder)
    assert result.exit_code == 1 and "does not decode" in result.output


def test_greyscale_image_is_not_rgb(tmp_path):
    grey = encode_image(np.zeros((32, 16), np.uint8), "png")
    result = run_validate(raw_folder(tmp_path / "f", {"src-000-000000.tar": raw_sample(image=grey)}))
    assert result.exit_code == 1 and "not 8-bit RGB" in result.output


@pytest.mark.parametrize("key,expected", [
    ("src/../a", "'..'"),
    ("src/a/b", "exactly one '/'"),
    ("src/a b", "outside [A-Za-z0-9_-]"),
])
def test_unsanitised_keys(tmp_path, key, expected):
    folder = raw_folder(tmp_path / "f", {"src-000-000000.tar": raw_sample(key=key, meta=valid_meta(key))})
    result = run_validate(folder)
    assert result.exit_code == 1 and expected in result.output, result.output


def test_absolute_member_path_is_reported(tmp_path):
    folder = raw_folder(tmp_path / "f", {"src-000-000000.tar": raw_sample(key="/src/a", meta=valid_meta("src/a"))})
    result = run_validate(folder)
    assert result.exit_code == 1 and "absolute" in result.output


def test_duplicate_keys_across_shards(tmp_path):
    folder = raw_folder(tmp_path / "f", {"src-000-000000.tar": raw_sample(), "src-000-000001.tar": raw_sample()})
    result = run_validate(folder)
    assert result.exit_code == 1 and "duplicate key (also in src-000-000000.tar)" in result.output


def test_manifest_missing(tmp_path):
    folder = raw_folder(tmp_path / "f", {"src-000-000000.tar": raw_sample()}, manifest=False)
    result = run_validate(folder)
    assert result.exit_code == 1 and "manifest.parquet is missing" in result.output


def test_manifest_disagreeing_with_tars(tmp_path):
    folder = clean_folder(tmp_path / "f")
    table = pq.read_table(folder / "manifest.parquet").to_pylist()
    table[0]["kind"] = "face"  # wrong value
    extra = dict(table[1], key="src/ghost")  # a row no shard holds
    rows = [table[0], extra] + table[2:]  # and table[1]'s sample is no longer listed
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(folder / "manifest.parquet")),
                   folder / "manifest.parquet")
    result = run_validate(folder)
    assert result.exit_code == 1
    assert "manifest kind='face'" in result.output
    assert "src/ghost" in result.output and "no shard holds" in result.output
    assert "not in the manifest" in result.output


def test_non_tar_file_gives_one_line(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "src-000-000000.tar").write_text("this is not a tar archive\n" * 40)
    write_manifest(folder)
    result = run_validate(folder)
    assert result.exit_code == 1 and "src-000-000000.tar" in result.output
    assert "not a readable tar" in result.output or "corrupt" in result.output


def test_truncated_tar_gives_one_line(tmp_path):
    folder = clean_folder(tmp_path / "f", n=2)
    shard = folder / "src-000-000000.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2 + 100])
    result = run_validate(folder)
    assert result.exit_code == 1
    assert "truncated" in result.output


def test_empty_folder_and_missing_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_validate(tmp_path / "empty")
    assert result.exit_code == 1 and "no shards" in result.output
    result = run_validate(tmp_path / "nowhere")
    assert result.exit_code == 2 and "does not exist" in result.output
    (tmp_path / "file").write_text("x")
    assert run_validate(tmp_path / "file").exit_code == 2


def test_mask_flag_must_match_members(tmp_path):
    members = raw_sample(meta=meta_with(has_mask=True))
    result = run_validate(raw_folder(tmp_path / "f", {"src-000-000000.tar": members}))
    assert result.exit_code == 1 and "mask.png is missing" in result.output


def test_bad_shard_name(tmp_path):
    folder = raw_folder(tmp_path / "f", {"whatever.tar": raw_sample()})
    result = run_validate(folder)
    assert result.exit_code == 1 and "does not follow" in result.output


def test_geometry_of_real_writers_passes():
    """An aligned 1:2 full-body image covers only the strip x in [0.25, 0.75], and a derived SR
    sample only the lower half y in [0.5, 1]: both are consistent geometry, not defects."""
    assert meta_defects(valid_meta()) == []
    assert np.allclose(np.asarray(valid_meta()["region"])[:, 0].tolist(), [0.25, 0.75, 0.75, 0.25])
    w, h = 64, 32
    H = scale_translate(1 / 64, 0.5 / 32, 0.0, 0.5)  # the lower half of the square, 64 px wide
    sr = valid_meta(w=w, h=h)
    sr.update(kind="lower", tier="SR", H=H.tolist(), region=image_region(H, w, h).tolist(),
              density=density(H, w, h))
    assert meta_defects(sr) == []


def test_deeply_nested_meta_json_is_a_defect_not_a_traceback(tmp_path):
    members = [(n, b"[" * 100_000 + b"]" * 100_000 if n.endswith(".json") else d) for n, d in raw_sample()]
    result = run_validate(raw_folder(tmp_path / "f", {"src-000-000000.tar": members}, manifest=False))
    assert result.exit_code == 1 and "nested too deeply" in result.output


def test_sixteen_bit_grey_image_is_not_rgb(tmp_path):
    grey16 = encode_image(np.full((32, 16), 30000, np.uint16), "png")
    result = run_validate(raw_folder(tmp_path / "f", {"src-000-000000.tar": raw_sample(image=grey16)}))
    assert result.exit_code == 1 and "not 8-bit RGB" in result.output


def test_mask_of_the_wrong_size(tmp_path):
    members = raw_sample(meta=meta_with(has_mask=True)) + [("src/a.mask.png", encode_image(np.zeros((8, 8), np.uint8),
                                                                                               "png"))]
    result = run_validate(raw_folder(tmp_path / "f", {"src-000-000000.tar": members}))
    assert result.exit_code == 1 and "mask.png is 8x8, meta records 16x32" in result.output


def test_image_far_larger_than_declared_is_refused_from_its_header(tmp_path):
    """Only the first bytes of a 6000x6000 PNG: a full decode would fail on the missing data, the
    size check from the header does not need it."""
    big = encode_image(np.zeros((6000, 6000), np.uint8), "png")[:200]
    result = run_validate(raw_folder(tmp_path / "f", {"src-000-000000.tar": raw_sample(image=big)}))
    assert result.exit_code == 1 and "image is 6000x6000, meta records 16x32" in result.output


def test_empty_shard_is_a_defect(tmp_path):
    folder = raw_folder(tmp_path / "f", {"src-000-000000.tar": raw_sample(), "empty-000-000000.tar": []})
    result = run_validate(folder)
    assert result.exit_code == 1 and "empty-000-000000.tar" in result.output and "no samples" in result.output


def test_shards_are_checked_in_parallel_with_the_same_report_in_the_same_order(tmp_path, monkeypatch):
    import mst_pipeline.shards.validate as validate

    shards = {f"src-000-{i:06d}.tar": raw_sample(key=f"src/s{i}") + raw_sample(key=f"src/t{i}") for i in range(4)}
    shards["src-000-000004.tar"] = raw_sample(key="src/s1")  # a duplicate of a key in shard 1
    shards["src-000-000005.tar"] = raw_sample(key="src/bad", meta={"key": "src/bad"})  # defective meta
    folder = raw_folder(tmp_path / "f", shards)
    pools = []

    class CountingPool(validate.ProcessPoolExecutor):
        def __init__(self, workers, *args, **kwargs):
            pools.append(workers)
            super().__init__(workers, *args, **kwargs)

    monkeypatch.setattr(validate, "ProcessPoolExecutor", CountingPool)
    serial = validate.validate_folder(folder, workers=1).to_dict()
    assert pools == []
    parallel = validate.validate_folder(folder, workers=3).to_dict()
    assert pools == [3]
    assert parallel == serial  # defects in the same order, whatever process finished first
    assert serial["samples"] == 10 and "duplicate key (also in src-000-000001.tar)" in json.dumps(serial)
    assert run_validate(folder, "--workers", "2").exit_code == 1
    assert pools == [3, 2]


def test_a_folder_aligned_in_two_full_body_spaces_is_reported(tmp_path):
    from mst_pipeline.shards.writer import encode_sample

    from shard_helpers import random_image, sample_fields

    def aligned(stem, space):
        fields = sample_fields(16, 32, 0)
        fields["aligned_with"] = {"space": space, "space_source": "default" if space == "a" * 16 else "shhq",
                                  "prior": None, "keypoints": "mediapipe:0123"}
        return encode_sample("src", stem, random_image(16, 32, 0), fields, ext="png")

    with ShardWriter(tmp_path / "one", "src") as w:
        for i in range(2):
            w.write(aligned(f"k{i}", "a" * 16))
    assert run_validate(tmp_path / "one").exit_code == 0
    with ShardWriter(tmp_path / "mixed", "src") as w:
        w.write(aligned("k0", "a" * 16))
        w.write(aligned("k1", "b" * 16))
    result = run_validate(tmp_path / "mixed", "--json")
    assert result.exit_code != 0
    report = json.loads(result.output)
    assert report["spaces"] == {f"default:{'a' * 16}": 1, f"shhq:{'b' * 16}": 1}
    assert any("2 different full-body spaces" in d["problem"] for d in report["defects"])


def test_singularity_of_h_does_not_depend_on_translation_or_pixel_size():
    from uh_train.format.spec import homography_defects

    far = [[1 / 32, 0, 1e4], [0, 1 / 32, -1e4], [0, 0, 1]]  # invertible, whatever its translation
    tiny = [[1e-9, 0, 0], [0, 1e-9, 0], [0, 0, 1]]
    projective = [[2048.0, 30, 1e6], [-12, 2048, 5e5], [1e-4, 2e-4, 1]]
    assert homography_defects(far) == [] and homography_defects(tiny) == [] and homography_defects(projective) == []
    singular = [[1, 2, 1e5], [2, 4, 2e5], [0, 0, 1]]  # the image collapses to a line
    assert homography_defects(singular) == ["H is singular (not invertible)"]
    assert homography_defects([[1, 0, 0], [0, 0, 0], [0, 0, 1]]) == ["H is singular (not invertible)"]
    mirrored = [[-1 / 32, 0, 1e4], [0, 1 / 32, 1e4], [0, 0, 1]]
    assert "negative determinant" in homography_defects(mirrored)[0]
