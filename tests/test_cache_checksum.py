"""The chunk checksums: one CRC-32C whichever library, checked once per chunk, before any byte is served."""

import threading

import google_crc32c
import numpy as np
import pytest
import zarr
from zarr.codecs import Crc32cCodec

from scav.core import checksum
from scav.core import loader as loader_module
from scav.core.cache import CacheWriter, ClipRecord, FeatureCache, new_meta
from scav.core.chunk_layout import ArrayChunks, ChunkError
from scav.core.clip_reader import ClipReader, files_for
from scav.core.loader import iter_eval_batches, make_train_loader
from scav.core.schema import VIDEO, AudioTrack, CacheError, CacheLayout, ClipInfo, EncoderInfo

DV, DA = 6, 4


def test_crc_agrees_with_google_crc32c_which_zarr_uses():
    rng = np.random.default_rng(0)
    for n in (0, 1, 7, 4096, 100_003):
        buf = rng.integers(0, 256, n, dtype=np.uint8)
        assert checksum.crc32c(buf) == google_crc32c.value(buf.tobytes())
        assert checksum.crc32c(buf[1:]) == google_crc32c.value(buf[1:].tobytes())  # a view, no copy


def test_writer_codec_writes_what_zarrs_own_codec_writes(tmp_path):
    data = np.random.default_rng(1).standard_normal((50, 7)).astype(np.float16)
    g = zarr.open_group(str(tmp_path), mode="w", zarr_format=3)
    for name, codec in (("fast", checksum.FastCrc32cCodec()), ("zarr", Crc32cCodec())):
        g.create_array(name, shape=data.shape, dtype="float16", chunks=(16, 7), compressors=[codec])[:] = data
    for c in range(4):
        assert (tmp_path / "fast" / "c" / str(c) / "0").read_bytes() == (tmp_path / "zarr" / "c" / str(c) / "0").read_bytes()
    assert (tmp_path / "fast" / "zarr.json").read_text() == (tmp_path / "zarr" / "zarr.json").read_text()
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "fast"), mode="r")[:], data)  # Zarr's codec reads it


def _cache(path, n=12, part=6):
    meta = new_meta(EncoderInfo("pixels", DV, stand_in=True), EncoderInfo("fbank", DA, stand_in=True),
                    layout=CacheLayout(chunk_rows=4))
    with CacheWriter.create_or_open(path, meta) as w:
        recs = []
        for i in range(n):
            rng = np.random.default_rng(i)
            t, s = 2 + i % 5, 1 + i % 3
            info = ClipInfo(f"c{i:02d}", "train", source=f"s{i // 3}", n_video=t, tracks=[AudioTrack(0, None, s)])
            recs.append(ClipRecord(info, rng.standard_normal((t, DV)).astype(np.float16), np.arange(t) / 25.0,
                                   [rng.standard_normal((s, DA)).astype(np.float16)]))
        for a in range(0, n, part):
            w.write_part(recs[a : a + part])
    return path


def test_each_chunk_is_checked_once_however_many_threads_ask(tmp_path, monkeypatch):
    cache = FeatureCache.open(_cache(tmp_path / "c.zarr"))
    flat = cache.parts[0].chunks("video/data")
    calls = []
    real = checksum._crc32c

    def slow_crc(buf):
        calls.append(len(buf))
        threading.Event().wait(0.05)  # long enough for the other threads to ask meanwhile
        return real(buf)

    monkeypatch.setattr(checksum, "_crc32c", slow_crc)
    checks = []
    list(flat.pieces(0, 4, checks))
    assert len(checks) == 1 and not flat.chunk_verified(0)
    errors = []

    def ask():
        try:
            checks[0].run()
        except ChunkError as e:
            errors.append(e)

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(calls) == 1 and flat.chunk_verified(0)
    assert list(flat.pieces(0, 4, checks := [])) and checks == []  # verified: no check left to run


def _damage_first_video_chunk(part_dir) -> None:
    f = part_dir / "video" / "data" / "c" / "0" / "0"
    b = bytearray(f.read_bytes())
    b[3] ^= 0xFF  # same size, wrong bytes: only the crc can tell
    f.write_bytes(bytes(b))


def test_a_checksum_failure_seen_by_any_thread_fails_every_reader(tmp_path):
    path = _cache(tmp_path / "c.zarr")
    cache = FeatureCache.open(path)
    _damage_first_video_chunk(cache.parts[0].path)
    flat = ArrayChunks.open(cache.parts[0].path / "video" / "data", strict=True)
    checks = []
    list(flat.pieces(0, 2, checks))
    for _ in range(2):  # the failure is remembered, and raised again for the next reader
        with pytest.raises(ChunkError, match=r"c/0/0: checksum mismatch"):
            checks[0].run()


def test_plans_defer_the_crc_and_reads_run_it_first(tmp_path):
    path = _cache(tmp_path / "c.zarr")
    _damage_first_video_chunk(FeatureCache.open(path).parts[0].path)
    cache = FeatureCache.open(path)
    reader = ClipReader(cache)
    n, copies, checks = reader.plan(0, 0, VIDEO)  # sizes are fine: planning does not fail
    assert n == 2 and copies and len(checks) == 1
    out = np.full((n, DV), 7, np.float16)
    with pytest.raises(CacheError, match=r"clip 'c00' in part p-.* checksum mismatch"):
        reader.read_planned(0, 0, VIDEO, 0, (n, copies, checks), out)
    assert (out == 7).all()  # nothing was copied


@pytest.mark.parametrize("spare_cores", [True, False])
def test_fresh_cache_is_verified_once_then_warm_epochs_check_nothing(tmp_path, monkeypatch, spare_cores):
    path = _cache(tmp_path / "c.zarr", n=24)
    cache = FeatureCache.open(path)
    loader = make_train_loader(cache, "train", 4, seed=0, drop_last=False)
    reader = ClipReader(cache)
    assert reader.needs_verifying(loader.locs, loader.tracks)
    started = []
    real = ClipReader.verify_ahead
    monkeypatch.setattr(ClipReader, "verify_ahead", lambda self, *a: (started.append(1), real(self, *a))[1])
    monkeypatch.setattr(loader_module, "VERIFY_AHEAD_MIN_CPUS", 1 if spare_cores else 10**6)
    assert sum(len(b) for b in loader) == 24 and started == ([1] if spare_cores else [])
    assert not reader.needs_verifying(loader.locs, loader.tracks)
    assert all(a is None or a.fully_verified for a in files_for(cache)._arrays.values())
    assert sum(len(b) for b in make_train_loader(cache, "train", 4, seed=0, epoch=1, drop_last=False)) == 24
    assert started == ([1] if spare_cores else [])  # warm: no verifier thread


@pytest.mark.parametrize("min_cpus", [1, 10**6])  # with and without the verify-ahead thread
def test_loader_stops_at_a_damaged_chunk_naming_the_clip(tmp_path, monkeypatch, min_cpus):
    monkeypatch.setattr(loader_module, "VERIFY_AHEAD_MIN_CPUS", min_cpus)
    path = _cache(tmp_path / "c.zarr", n=24)
    _damage_first_video_chunk(FeatureCache.open(path).parts[1].path)  # clips c06.. of part 1
    with pytest.raises(CacheError, match=r"clip 'c06' in part .*checksum mismatch"):
        for _ in make_train_loader(path, "train", 4, seed=0, drop_last=False):
            pass
    batches = []
    with pytest.raises(CacheError, match="checksum mismatch"):
        for b in iter_eval_batches(path, batch_size=4):
            batches.append(b.clip_ids)
    assert batches == [["c00", "c01", "c02", "c03"]]  # part 0's first batch, nothing of the damaged chunk
