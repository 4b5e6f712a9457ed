"""The decode pool and batched encoding write the same cache as the in-process reference path.

Reference: ``decode_workers=0`` (threads in the encoding process, clip by clip),
the code path before the pool. Compared: every clip's info and features, which
clips each part holds (in order), and the failures table row by row.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cache_factory import assert_same_contents, cache_contents
from scav.core.cache import FeatureCache
from scav.data_manifests.manifest import ManifestRow, load_manifest, write_manifest
from scav.extract import decode_pool, runner
from scav.extract.runner import run
from test_extract_cli import cli, tiny_clip
from test_extract_runner import MIXED, _FakeEnc, broken, cfg_for, mixed  # noqa: F401 (fixtures)

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


@pytest.mark.parametrize("fixture", ["mixed", "broken"])
def test_pool_writes_the_reference_cache(fixture, request, tmp_path):
    _, manifest = request.getfixturevalue(fixture)
    ref = run(cfg_for(manifest, tmp_path / "ref.zarr", part_clips=3, decode_workers=0, decode_threads=1))
    pool = run(cfg_for(manifest, tmp_path / "pool.zarr", part_clips=3, decode_workers=2, frame_batch=7, prefetch=2))
    assert_same_cache(tmp_path / "ref.zarr", tmp_path / "pool.zarr")
    assert pool["failures"] == ref["failures"] and pool["extracted"] == ref["extracted"]
    if fixture == "broken":  # a decode failure is still a row with stage and reason
        assert {f["stage"] for f in pool["failures"]} >= {"open", "decode-audio", "decode-video", "range"}


def test_two_devices_each_with_decoders_write_the_reference_cache(mixed, tmp_path):  # noqa: F811
    _, manifest = mixed
    run(cfg_for(manifest, tmp_path / "ref.zarr", part_clips=2, decode_workers=0))
    summary = run(cfg_for(manifest, tmp_path / "mp.zarr", part_clips=2, devices=("cpu", "cpu"), decode_workers=2))
    assert summary["extracted"] == len(MIXED) + 1
    assert_same_contents(cache_contents(tmp_path / "ref.zarr"), cache_contents(tmp_path / "mp.zarr"))
    # the same shards as before: device k wrote pending[k::2], each in its own parts
    parts, _ = layout(tmp_path / "mp.zarr")
    ids = [r.clip_id for r in load_manifest(manifest)]
    assert sorted(tuple(p) for p in parts) == sorted(
        tuple(s[i:i + 2]) for s in (ids[0::2], ids[1::2]) for i in range(0, len(s), 2))


class _ChunkSpy(_FakeEnc):
    """A fake video encoder that records the chunk sizes it was given."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.chunks = []

    def encode(self, x):
        self.chunks.append(len(x))
        return np.full((len(x), self.dim), 1.0, np.float32)


@pytest.mark.parametrize("workers", [0, 2])
def test_clips_stream_in_chunks_and_errors_stay_on_their_clip(mixed, tmp_path, monkeypatch, workers):  # noqa: F811
    _, manifest = mixed
    plain = (_FakeEnc("v", 8, fail_on_len=12), _FakeEnc("a", 4))
    monkeypatch.setattr(runner, "build_encoders", lambda spec, device="cpu": plain)
    ref = run(cfg_for(manifest, tmp_path / "ref.zarr", decode_workers=0))  # chunks of 1024: a24 is one chunk of 12
    assert ref["failures"] == [{**ref["failures"][0], "clip_id": "a24", "stage": "encode"}]
    spy = (_ChunkSpy("v", 8), _FakeEnc("a", 4))
    monkeypatch.setattr(runner, "build_encoders", lambda spec, device="cpu": spy)
    got = run(cfg_for(manifest, tmp_path / "spy.zarr", decode_workers=workers, frame_batch=5))
    assert got["extracted"] == len(MIXED) + 1 and not got["failures"]
    assert max(spy[0].chunks) == 5 and min(spy[0].chunks) >= 1  # no call saw more than one chunk
    cache = FeatureCache.open(tmp_path / "spy.zarr")
    assert sum(spy[0].chunks) == sum(c.n_video for c in cache.clips())


def test_streams_come_in_row_order_and_hold_at_most_the_credits(mixed):  # noqa: F811
    from scav.extract.decode import VideoChunk

    folder, manifest = mixed
    rows = load_manifest(manifest) * 2
    spec = decode_pool.StreamSpec(chunk_frames=4)
    with decode_pool.ThreadStreams(rows, folder, spec, workers=2, credits=2) as src:
        seen = []
        for k, (row, events) in enumerate(src):
            assert row.clip_id == rows[k].clip_id  # manifest order
            seen.append(row.clip_id)
            for ev in events:
                for q in src.queues:  # never more waiting than the credits
                    assert q.qsize() <= 2
                if isinstance(ev, VideoChunk):
                    assert len(ev.frames) <= 4
    assert seen == [r.clip_id for r in rows]


def test_large_chunks_take_more_credits(mixed):  # noqa: F811
    """A chunk takes a credit per ``credit_bytes``: with chunks of 3+ units and 3 credits, one chunk waits at
    a time, whatever the count of events (what bounds CLIP's 29 MB chunks, not only the stand-ins' small ones)."""
    from scav.extract.decode import VideoChunk

    folder, manifest = mixed
    rows = load_manifest(manifest)
    spec = decode_pool.StreamSpec(chunk_frames=4, credit_bytes=1000)  # raw frames: every 4-frame chunk > 3 KB
    waiting_chunks = []
    with decode_pool.ThreadStreams(rows, folder, spec, workers=2, credits=3) as src:
        for _, events in src:
            for ev in events:
                for q in src.queues:
                    held = list(q.queue)
                    assert sum(decode_pool._weight(e, 3, 1000) for e in held) <= 3
                    waiting_chunks.append(sum(isinstance(e, VideoChunk) for e in held))
    assert max(waiting_chunks) == 1  # small events still flow 3 at a time; chunks one by one
    assert decode_pool._weight(VideoChunk(np.zeros((192, 224, 224, 3), np.uint8), np.zeros(192)), 4, 8 << 20) == 4
    assert decode_pool._weight(VideoChunk(np.zeros((250, 16, 16, 3), np.float32), np.zeros(250)), 4, 8 << 20) == 1


@pytest.mark.parametrize("kind", ["threads", "processes"])
@pytest.mark.parametrize("credit_bytes", [8 << 20, 1], ids=["one-credit-events", "chunks-take-all-credits"])
def test_streamed_clip_is_the_decoded_clip(mixed, kind, credit_bytes):  # noqa: F811
    from scav.extract.decode import AudioPiece, VideoChunk, VideoEnd, decode_clip

    folder, manifest = mixed
    rows = [r for r in load_manifest(manifest) if r.clip_id in ("b25", "e_long_win", "f_two_tracks")]
    spec = decode_pool.StreamSpec(chunk_frames=7, audio_piece=1000, credit_bytes=credit_bytes)
    cls = decode_pool.ThreadStreams if kind == "threads" else decode_pool.ProcessStreams
    with cls(rows, folder, spec, workers=2, credits=2) as src:
        for row, events in src:
            evs = list(events)
            ref = decode_clip(row.resolve(folder), row.start, row.end)
            frames = np.concatenate([e.frames for e in evs if isinstance(e, VideoChunk)])
            np.testing.assert_array_equal(frames, ref.frames)
            head = next(e for e in evs if isinstance(e, VideoEnd))
            assert (head.fps, head.start, head.end) == (ref.fps, ref.start, ref.end)
            pieces = [e.samples for e in evs if isinstance(e, AudioPiece)]
            assert max(len(p) for p in pieces) <= 1000
            np.testing.assert_array_equal(np.concatenate(pieces), np.concatenate([a.samples for a in ref.audio]))


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
