"""Two writers on one cache, as real processes: the second is refused (or waits), nothing is lost.

Writer A is paused inside a part (staged, not committed) through the test hook
``SCAV_TEST_PAUSE_IN_PART`` of ``CacheWriter.write_part``; B runs meanwhile.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from scav.core.cache import CacheWriter, ClipRecord, FeatureCache, new_meta
from scav.core.part_builder import PAUSE_ENV
from scav.core.schema import AudioTrack, CacheError, ClipInfo, EncoderInfo
from scav.data_manifests.manifest import ManifestRow, write_manifest

from test_extract_cli import tiny_clip

PY = sys.executable
META = new_meta(EncoderInfo("pixels", 4, stand_in=True), EncoderInfo("fbank", 3, stand_in=True))


@pytest.fixture(scope="module")
def eight(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eight")
    rows = []
    for i in range(8):
        tiny_clip(folder / "media" / f"v{i}.mp4", seconds=0.6, seed=i)
        rows.append(ManifestRow(f"clip{i:02d}", f"media/v{i}.mp4", split="train"))
    manifest = write_manifest(rows, folder / "m.csv")
    header_only = folder / "empty.csv"
    header_only.write_text(manifest.read_text().splitlines()[0] + "\n")
    return manifest, header_only


def _extract_cmd(manifest: Path, out: Path, *extra: str) -> list[str]:
    return [PY, "-m", "scav.extract.cli", str(manifest), "--out", str(out), "--part-clips", "2",
            "--no-progress", "--decode-threads", "1", *extra]


def _start_paused(cmd: list[str], pause: Path) -> subprocess.Popen:
    pause.mkdir()
    env = {**os.environ, PAUSE_ENV: str(pause), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 60
    while not any(pause.glob("paused-*")):
        assert proc.poll() is None and time.time() < deadline, f"writer A never paused: {proc.stderr.read()}"
        time.sleep(0.02)
    return proc


def _ids(out: Path) -> list[str]:
    cache = FeatureCache.open(out)
    return sorted(c.clip_id for p in cache.parts for c in p.clips)


@pytest.mark.parametrize("second", ["same-manifest", "header-only", "import"])
def test_a_second_writer_is_refused_while_the_first_is_inside_a_part(eight, tmp_path, second):
    manifest, header_only = eight
    out = tmp_path / "c.zarr"
    a = _start_paused(_extract_cmd(manifest, out), tmp_path / "pause")
    try:
        if second == "import":
            h5 = tmp_path / "x.h5"
            _small_h5(h5)
            b = subprocess.run([PY, "-m", "scav.extract.cli", "import", str(h5), "--out", str(out)],
                               capture_output=True, text=True, timeout=120)
        else:
            b = subprocess.run(_extract_cmd(header_only if second == "header-only" else manifest, out),
                               capture_output=True, text=True, timeout=120)
        assert b.returncode == 2, b.stderr
        lines = [ln for ln in b.stderr.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1 and "Traceback" not in b.stderr
        if second == "header-only":
            assert "no clips" in lines[0]
        else:
            assert "being written by another" in lines[0] and f"pid {a.pid}" in lines[0]
        staged = list((out / ".staging").rglob("p-*"))
        assert staged, "A's half-written part must still be there"
    finally:
        (tmp_path / "pause" / "resume").touch()
        _, err = a.communicate(timeout=120)
    assert a.returncode == 0, err
    assert _ids(out) == [f"clip{i:02d}" for i in range(8)]  # every clip exactly once
    for info in FeatureCache.open(out).clips():  # and readable: no part lost its data
        assert len(FeatureCache.open(out).get(info.clip_id).video) == info.n_video
    assert not any((out / ".staging").iterdir())
    again = subprocess.run(_extract_cmd(manifest, out, "--json", "-"), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and json.loads(again.stdout)["extracted"] == 0


def test_the_second_run_can_wait_and_then_adds_nothing_twice(eight, tmp_path):
    from scav.extract.runner import ExtractConfig, run

    manifest, _ = eight
    out = tmp_path / "c.zarr"
    a = _start_paused(_extract_cmd(manifest, out), tmp_path / "pause")
    import threading

    threading.Timer(1.0, (tmp_path / "pause" / "resume").touch).start()
    summary = run(ExtractConfig(manifest=manifest, out=out, progress=False, part_clips=2, lock_timeout=120))
    a.communicate(timeout=120)
    assert a.returncode == 0
    assert summary["extracted"] == 0 and summary["already_present"] == 8
    assert _ids(out) == [f"clip{i:02d}" for i in range(8)]


def _records(ids):
    rng = np.random.default_rng(0)
    return [ClipRecord(ClipInfo(c, "train", n_video=3, tracks=[AudioTrack(0, None, 2)]),
                       rng.standard_normal((3, 4)).astype(np.float16), np.arange(3) / 25.0,
                       [rng.standard_normal((2, 3)).astype(np.float16)]) for c in ids]


def _small_h5(path: Path) -> None:
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["video_encoder"], f.attrs["audio_encoder"] = "pixels", "fbank"
        g = f.create_group("clips/x0")
        g["video"] = np.ones((3, 768), np.float16)
        g["video_times"] = np.arange(3) / 25.0
        g["audio"] = np.ones((2, 2048), np.float16)
        g.attrs["split"] = "train"


_SHARD_WRITER = """
import sys, numpy as np
sys.path.insert(0, {tests!r})
from test_cache_concurrency import META, _records
from scav.core.cache import CacheWriter
w = CacheWriter({out!r}, META)   # a shard worker of the run that holds the lock: staging only
w.write_part(_records(["w0", "w1"]))
w.close()
"""


def test_cleaning_leftovers_never_deletes_a_live_writers_staging(tmp_path):
    """A shard worker (another process, e.g. a dask task on another host) is inside a part while
    the cache is opened for writing: its staging folder survives and its part commits."""
    out = tmp_path / "c.zarr"
    CacheWriter.create_or_open(out, META).close()
    pause = tmp_path / "pause"
    pause.mkdir()
    code = _SHARD_WRITER.format(tests=str(Path(__file__).parent), out=str(out))
    w = subprocess.Popen([PY, "-c", code], env={**os.environ, PAUSE_ENV: str(pause)}, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not any(pause.glob("paused-*")):
        assert w.poll() is None and time.time() < deadline, w.stderr.read()
        time.sleep(0.02)
    (out / ".staging" / "p-00000000000000000000-deadbeef").mkdir()  # a dead old-style writer's leftover
    with CacheWriter.create_or_open(out, META) as coordinator:  # cleans leftovers: only the dead one
        assert not (out / ".staging" / "p-00000000000000000000-deadbeef").exists()
        assert list((out / ".staging").rglob("p-*")), "the live writer's part was deleted"
        coordinator.write_part(_records(["c0"]))
    (pause / "resume").touch()
    assert w.wait(timeout=60) == 0, w.stderr.read()
    assert _ids(out) == ["c0", "w0", "w1"]
    assert all(len(FeatureCache.open(out).get(c).video) == 3 for c in ("c0", "w0", "w1"))


def test_an_interrupted_creation_is_reused_not_refused_forever(tmp_path):
    out = tmp_path / "c.zarr"
    (out / "parts").mkdir(parents=True)  # killed before the root zarr.json was written
    (out / ".staging").mkdir()
    with CacheWriter.create_or_open(out, META) as w:
        w.write_part(_records(["a"]))
    assert _ids(out) == ["a"]


def test_out_pointing_at_a_file_is_a_clear_error(tmp_path):
    f = tmp_path / "file.zarr"
    f.write_text("x")
    with pytest.raises(CacheError, match="is a file"):
        CacheWriter.create_or_open(f, META)
    with pytest.raises(CacheError, match="is a file"):
        FeatureCache.open(f)
