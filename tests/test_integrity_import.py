"""`scav-extract import` refuses bad features (naming file and clip, leaving nothing behind); CLI edges."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from scav.core.cache import FeatureCache
from scav.core.hdf5 import import_h5
from scav.core.schema import CacheError
from scav.data_manifests.manifest import ManifestRow, write_manifest
from extract_cli import cli


def _h5(path: Path, clips: dict, video_encoder="my-video", audio_encoder="my-audio") -> Path:
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["video_encoder"], f.attrs["audio_encoder"] = video_encoder, audio_encoder
        for name, (video, audio) in clips.items():
            g = f.create_group(f"clips/{name}")
            g["video"] = video
            g["video_times"] = np.arange(len(video)) / 25.0
            g["audio"] = audio
            g.attrs["split"] = "train"
    return path


GOOD = (np.ones((3, 4), np.float32), np.ones((2, 5), np.float32))


@pytest.mark.parametrize("bad, message", [
    ((np.full((3, 4), np.nan, np.float32), GOOD[1]), "video holds NaN or Inf"),
    ((GOOD[0], np.full((2, 5), np.inf, np.float32)), "audio track 0 holds NaN or Inf"),
    ((np.full((3, 4), 1e6, np.float32), GOOD[1]), "too large for float16"),
    ((np.ones((0, 4), np.float32), GOOD[1]), "'video' has no steps"),
    ((GOOD[0], np.ones((0, 5), np.float32)), "audio track 0 has no steps"),
])
def test_bad_values_are_refused_naming_file_and_clip_and_nothing_is_written(tmp_path, bad, message):
    src = _h5(tmp_path / "x.h5", {"a_ok": GOOD, "b_bad": bad})
    out = tmp_path / "c.zarr"
    with pytest.raises(CacheError, match=f"x.h5: clip 'b_bad': .*{message}"):
        import_h5(src, out)
    assert not out.exists()
    assert cli("import", str(src), "--out", str(out)) == 2 and not out.exists()


def test_a_dimension_that_contradicts_the_encoder_name_is_refused(tmp_path):
    src = _h5(tmp_path / "x.h5", {"a": (np.ones((3, 512), np.float32), np.ones((2, 6144), np.float32))},
              video_encoder="clip-vit-b32", audio_encoder="beats-iter3-as2m")
    with pytest.raises(CacheError, match="clip 'a' has video features of size 512, but encoder 'clip-vit-b32' gives 768"):
        import_h5(src, tmp_path / "c.zarr")
    assert not (tmp_path / "c.zarr").exists()


def test_a_failed_import_into_an_existing_cache_adds_nothing(tmp_path):
    out = tmp_path / "c.zarr"
    import_h5(_h5(tmp_path / "ok.h5", {"a": GOOD}), out)
    with pytest.raises(CacheError):
        import_h5(_h5(tmp_path / "bad.h5", {"b": GOOD, "c": (GOOD[0][:0], GOOD[1])}), out)
    assert [c.clip_id for c in FeatureCache.open(out).clips()] == ["a"]


def test_out_pointing_at_a_file_exits_2_with_one_line(tmp_path, capsys):
    f = tmp_path / "taken"
    f.write_text("not a cache")
    manifest = write_manifest([ManifestRow("a", "a.mp4")], tmp_path / "m.csv")
    assert cli(str(manifest), "--out", str(f), "--no-progress") == 2
    err = capsys.readouterr().err
    assert "is a file" in err and "Traceback" not in err and len(err.strip().splitlines()) <= 3
    assert cli("import", str(_h5(tmp_path / "x.h5", {"a": GOOD})), "--out", str(f)) == 2


def test_header_only_manifest_is_an_error_and_creates_no_cache(tmp_path, capsys):
    manifest = tmp_path / "m.csv"
    manifest.write_text("clip_id,path,start,end,split,label,source\n")
    assert cli(str(manifest), "--out", str(tmp_path / "c.zarr"), "--no-progress") == 2
    assert "no clips" in capsys.readouterr().err and not (tmp_path / "c.zarr").exists()


def test_a_media_path_that_is_a_directory_is_reported_as_such(tmp_path):
    from scav.extract.runner import ExtractConfig, run

    (tmp_path / "media" / "v0.mp4").mkdir(parents=True)
    manifest = write_manifest([ManifestRow("a", "media/v0.mp4")], tmp_path / "m.csv")
    summary = run(ExtractConfig(manifest=manifest, out=tmp_path / "c.zarr", progress=False))
    (failure,) = summary["failures"]
    assert failure["stage"] == "open" and "is a directory" in failure["reason"]
