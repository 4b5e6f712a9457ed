"""The decode pool and batched encoding write the same cache as the in-process reference path.

Reference: ``decode_workers=0`` (threads in the encoding process, clip by clip),
the code path before the pool. Compared: every clip's info and features, which
clips each part holds (in order), and the failures table row by row.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cache_factory import assert_same_contents, cache_contents
from test_extract_cli import cli, tiny_clip
from test_extract_runner import MIXED, _FakeEnc, broken, cfg_for, mixed  # noqa: F401 (fixtures)

from scav.core.cache import FeatureCache
from scav.core.schema import EncoderInfo, Failure
from scav.data_manifests.manifest import ManifestRow, load_manifest, write_manifest
from scav.extract import decode_pool, runner
from scav.extract.runner import run

PY = sys.executable


def layout(path: Path) -> tuple[list, list]:
    """(clip ids per part in commit order, failure rows per part) of a cache."""
    cache = FeatureCache.open(path)
    parts = [[c.clip_id for c in p.clips] for p in cache.parts]
    fails = [f.to_dict() for f in cache.failures()]
    return parts, fails


def assert_same_cache(a: Path, b: Path) -> None:
    assert_same_contents(cache_contents(a), cache_contents(b))
    assert layout(a) == layout(b)


def _exists(names: list[str]) -> list[str]:
    """Those of ``names`` still in /dev/shm (other processes on the machine may hold their own)."""
    return [n for n in names if os.path.exists(f"/dev/shm/{n}")]


def _record_released(monkeypatch) -> list[str]:
    """Names of the shared segments the runner releases."""
    names: list[str] = []
    real = decode_pool.release

    def spy(clip):
        shm = getattr(clip, "_shm", None)
        if shm is not None:
            names.append(shm.name)
        real(clip)

    monkeypatch.setattr(decode_pool, "release", spy)
    return names


@pytest.mark.parametrize("fixture", ["mixed", "broken"])
def test_pool_writes_the_reference_cache(fixture, request, tmp_path, monkeypatch):
    _, manifest = request.getfixturevalue(fixture)
    released = _record_released(monkeypatch)
    ref = run(cfg_for(manifest, tmp_path / "ref.zarr", part_clips=3, decode_workers=0, decode_threads=1))
    pool = run(cfg_for(manifest, tmp_path / "pool.zarr", part_clips=3, decode_workers=2, frame_batch=40, prefetch=2))
    assert_same_cache(tmp_path / "ref.zarr", tmp_path / "pool.zarr")
    assert pool["failures"] == ref["failures"] and pool["extracted"] == ref["extracted"]
    if fixture == "broken":  # a decode failure is still a row with stage and reason
        assert {f["stage"] for f in pool["failures"]} >= {"open", "decode-audio", "decode-video", "range"}
    assert released and not _exists(released)  # frames came through shared memory, all freed


def test_two_devices_share_one_pool_and_write_the_reference_cache(mixed, tmp_path):  # noqa: F811
    _, manifest = mixed
    run(cfg_for(manifest, tmp_path / "ref.zarr", part_clips=2, decode_workers=0))
    summary = run(cfg_for(manifest, tmp_path / "mp.zarr", part_clips=2, devices=("cpu", "cpu"), decode_workers=1))
    assert summary["extracted"] == len(MIXED) + 1
    assert_same_contents(cache_contents(tmp_path / "ref.zarr"), cache_contents(tmp_path / "mp.zarr"))
    # the same shards as before: device k wrote pending[k::2], each in its own parts
    parts, _ = layout(tmp_path / "mp.zarr")
    ids = [r.clip_id for r in load_manifest(manifest)]
    assert sorted(tuple(p) for p in parts) == sorted(
        tuple(s[i:i + 2]) for s in (ids[0::2], ids[1::2]) for i in range(0, len(s), 2))


class _ManyEnc(_FakeEnc):
    """A fake encoder with encode_many; records how many inputs (and frames) each call got."""

    calls: list

    def __init__(self, *a, fail_many=False, **kw):
        super().__init__(*a, **kw)
        self.calls, self.fail_many = [], fail_many

    def encode_many(self, xs):
        self.calls.append([len(x) for x in xs])
        if self.fail_many or any(self.fail_on_len == len(x) for x in xs):
            raise RuntimeError("batch boom")
        return [self.encode(x) for x in xs]


@pytest.mark.parametrize("workers", [0, 2])
def test_encode_many_batches_by_frames_and_errors_stay_on_their_clip(mixed, tmp_path, monkeypatch, workers):  # noqa: F811
    _, manifest = mixed
    plain = (_FakeEnc("v", 8, fail_on_len=12), _FakeEnc("a", 4))
    monkeypatch.setattr(runner, "build_encoders", lambda spec, device="cpu": plain)
    ref = run(cfg_for(manifest, tmp_path / "ref.zarr", decode_workers=0))
    many = (_ManyEnc("v", 8, fail_on_len=12), _ManyEnc("a", 4))
    monkeypatch.setattr(runner, "build_encoders", lambda spec, device="cpu": many)
    got = run(cfg_for(manifest, tmp_path / "many.zarr", decode_workers=workers, frame_batch=60))
    assert got["failures"] == ref["failures"] == [
        {**ref["failures"][0], "clip_id": "a24", "stage": "encode"}]
    assert_same_cache(tmp_path / "ref.zarr", tmp_path / "many.zarr")
    assert all(sum(c[:-1]) < 60 for c in many[0].calls)  # a batch stops once it reaches frame_batch
    assert len(many[1].calls) >= 1


def test_window_bounds_the_clips_held_and_frees_shared_memory(mixed, tmp_path):  # noqa: F811
    folder, manifest = mixed
    rows = load_manifest(manifest) * 2
    seen, held, names = [], [], []
    with decode_pool.ProcessDecodeSource(rows, folder, workers=2, prefetch=1) as src:
        assert src.window == 3
        for k, (row, clip) in enumerate(src):
            assert src.outstanding <= src.window
            assert row.clip_id == rows[k].clip_id  # manifest order
            seen.append(row.clip_id)
            names.append(clip._shm.name)
            held.append(clip)
            if len(held) == 2 or not src.ready():  # a consumer holding a batch of two
                for c in held:
                    decode_pool.release(c)
                held.clear()
        for c in held:
            decode_pool.release(c)
    assert seen == [r.clip_id for r in rows] and src.outstanding == 0
    assert len(set(names)) == len(rows) and not _exists(names)


def test_pool_frames_are_the_decoders_frames(mixed):  # noqa: F811
    from scav.extract.decode import decode_clip

    folder, manifest = mixed
    rows = [r for r in load_manifest(manifest) if r.clip_id in ("b25", "e_long_win")]
    with decode_pool.ProcessDecodeSource(rows, folder, workers=1, prefetch=1) as src:
        for row, clip in src:
            ref = decode_clip(row.resolve(folder), row.start, row.end)
            np.testing.assert_array_equal(clip.frames, ref.frames)
            np.testing.assert_array_equal(clip.frame_times, ref.frame_times)
            np.testing.assert_array_equal(clip.audio[0].samples, ref.audio[0].samples)
            decode_pool.release(clip)


def test_full_shm_falls_back_to_pickled_frames(mixed, monkeypatch):  # noqa: F811
    monkeypatch.setattr(decode_pool, "_shm_has_room", lambda n: False)
    folder, manifest = mixed
    row = load_manifest(manifest)[1]
    clip = decode_pool._decode_to_shared(row, str(folder))
    assert isinstance(clip.frames, np.ndarray) and len(clip.frames) > 0


def test_default_workers_leave_a_core_per_gpu(monkeypatch):
    monkeypatch.setattr(decode_pool, "available_cores", lambda: 16)
    assert decode_pool.default_decode_workers(1) == 15 and decode_pool.default_decode_workers(0) == 16
    monkeypatch.setattr(decode_pool, "available_cores", lambda: 1)
    assert decode_pool.default_decode_workers(2) == 1


def _hold_lock(out: Path, seconds: float) -> subprocess.Popen:
    code = ("import sys, time; from pathlib import Path; from scav.core.writer_lock import CacheLock\n"
            "l = CacheLock(Path(sys.argv[1])); print('held', flush=True); time.sleep(float(sys.argv[2]))")
    proc = subprocess.Popen([PY, "-c", code, str(out), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_wait_waits_for_the_other_writer_instead_of_refusing(tmp_path, capsys):
    media = tmp_path / "media"
    rows = [ManifestRow(f"c{i}", f"media/v{i}.mp4", split="train") for i in range(2)]
    for i in range(2):
        tiny_clip(media / f"v{i}.mp4", seconds=0.5, seed=i)
    manifest = write_manifest(rows, tmp_path / "m.csv")
    out = tmp_path / "f.zarr"
    assert cli(str(manifest), "--out", str(out), "--no-progress", "--split", "train") == 0  # creates the cache
    holder = _hold_lock(out, 1.5)
    try:
        capsys.readouterr()
        assert cli(str(manifest), "--out", str(out), "--no-progress", "--retry-failed") == 2
        assert "being written" in capsys.readouterr().err
        assert cli(str(manifest), "--out", str(out), "--no-progress", "--wait", "60", "--json", "-") == 0
        assert json.loads(capsys.readouterr().out)["already_present"] == 2
    finally:
        holder.wait(timeout=30)
    # import: same option, same behaviour
    from scav.core.hdf5 import export_h5

    export_h5(out, tmp_path / "f.h5")
    holder = _hold_lock(out, 1.5)
    try:
        assert cli("import", str(tmp_path / "f.h5"), "--out", str(out)) == 2
        assert cli("import", str(tmp_path / "f.h5"), "--out", str(out), "--wait", "60") == 0
    finally:
        holder.wait(timeout=30)
    with pytest.raises(ValueError, match="wait"):
        run(cfg_for(manifest, out, lock_timeout=-1))
