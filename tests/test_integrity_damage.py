"""Damaged caches: every case is caught (named part and clip), never read as zeros; verify and repair."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cache_factory import make_random_cache

from scav.core.cache import FeatureCache
from scav.core.loader import iter_eval_batches, make_train_loader
from scav.core.schema import CacheError
from scav.core.verify import verify_cache
from extract_cli import cli


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return make_random_cache(tmp_path_factory.mktemp("c") / "c.zarr", {"train": 40, "test": 8})


@pytest.fixture
def cache(pristine, tmp_path):
    path = tmp_path / "c.zarr"
    shutil.copytree(pristine, path)
    return path


def _first_part(path: Path) -> Path:
    return sorted((path / "parts").iterdir())[0]


def _damage(path: Path, kind: str) -> tuple[str, list[str]]:
    """Damage the first part; returns (its name, its clip ids)."""
    part = _first_part(path)
    clips = [c["clip_id"] for c in json.loads((part / "zarr.json").read_text())["attributes"]["clips"]]
    if kind == "delete-video-data":
        (part / "video/data/c/0/0").unlink()
    elif kind == "delete-video-times":
        (part / "video/times/c/0").unlink()
    elif kind == "delete-offsets":
        (part / "video/offsets/c/0").unlink()
    elif kind == "truncate-audio":
        f = part / "audio/t0/data/c/0/0"
        f.write_bytes(f.read_bytes()[:100])
    elif kind == "flip-a-byte":
        f = part / "video/data/c/0/0"
        b = bytearray(f.read_bytes())
        b[10] ^= 0xFF
        f.write_bytes(bytes(b))
    elif kind == "truncate-part-json":
        f = part / "zarr.json"
        f.write_bytes(f.read_bytes()[:40])
    return part.name, clips


KINDS = ["delete-video-data", "delete-video-times", "delete-offsets", "truncate-audio", "flip-a-byte",
         "truncate-part-json"]


@pytest.mark.parametrize("kind", KINDS)
def test_damage_is_found_by_verify_and_named_by_readers_never_zeros(cache, kind, capsys):
    name, clips = _damage(cache, kind)
    report = verify_cache(cache)
    assert [d.name for d in report.damaged] == [name]
    if kind != "truncate-part-json":
        assert report.damaged[0].clip_ids == clips
    assert cli("verify", str(cache)) == 1
    out = capsys.readouterr().out
    assert f"damaged part {name}" in out
    assert cli("inspect", str(cache), "--verify", "--json", "-") == 0
    assert json.loads(capsys.readouterr().out)["health"].startswith("damaged")

    fc = FeatureCache.open(cache)
    if kind == "truncate-part-json":  # the part is listed, its clips absent, the rest usable
        assert [d.name for d in fc.damaged] == [name] and len(fc) == 48 - len(clips)
        assert all(len(b) for b in iter_eval_batches(fc, "test", batch_size=4))
        return
    readers = [
        lambda: [fc.get(c) for c in clips],
        lambda: list(iter_eval_batches(cache, "train", batch_size=8)),
        lambda: list(make_train_loader(cache, "train", 8, seed=0)),
    ]
    if kind == "delete-video-times":
        readers = readers[:1]  # batches carry no times: only FeatureCache.get reads them
    for read in readers:
        with pytest.raises(CacheError) as e:
            read()
        msg = str(e.value)
        assert name in msg and ("clip" in msg or "offsets" in msg), msg


@pytest.mark.parametrize("kind", KINDS)
def test_repair_sets_damaged_parts_aside_and_the_rest_reads_cleanly(cache, kind, capsys):
    name, clips = _damage(cache, kind)
    assert cli("verify", str(cache), "--repair") == 0
    assert (cache / ".damaged" / name).is_dir()
    assert cli("verify", str(cache)) == 0
    assert "healthy" in capsys.readouterr().out
    fc = FeatureCache.open(cache)
    assert not set(clips) & {c.clip_id for c in fc.clips()} and len(fc) == 48 - len(clips)
    for b in make_train_loader(fc, "train", 4, seed=0):
        assert b.video.abs().sum() > 0


def test_a_healthy_cache_verifies_and_inspect_says_healthy_only_after_checking(cache, capsys):
    assert verify_cache(cache).healthy and cli("verify", str(cache)) == 0
    capsys.readouterr()
    assert cli("inspect", str(cache), "--json", "-") == 0
    assert json.loads(capsys.readouterr().out)["health"].startswith("not checked")
    assert cli("inspect", str(cache), "--verify", "--json", "-") == 0
    assert json.loads(capsys.readouterr().out)["health"] == "healthy"


def test_nan_in_a_stored_part_is_reported(cache):
    from scav.core.chunk_layout import ArrayChunks
    import google_crc32c

    part = _first_part(cache)
    f = part / "video/data/c/0/0"
    b = bytearray(f.read_bytes())
    b[0:2] = np.array([np.nan], np.float16).tobytes()
    b[-4:] = np.uint32(google_crc32c.value(bytes(b[:-4]))).tobytes()  # a valid checksum of bad values
    f.write_bytes(bytes(b))
    assert ArrayChunks.open(part / "video/data").verify_all() == []
    report = verify_cache(cache)
    assert any("NaN" in p for p in report.damaged[0].problems)


def test_caches_without_checksums_still_open_and_read(tmp_path):
    """A cache written before schema minor 1: no crc32c, no checksums field in its layout."""
    from scav.core.schema import CacheLayout

    path = make_random_cache(tmp_path / "old.zarr", {"train": 8})
    root = json.loads((path / "zarr.json").read_text())
    layout = root["attributes"]["scav"]["layout"]
    assert layout["checksums"] is True and root["attributes"]["scav"]["schema_minor"] == 1
    del layout["checksums"], root["attributes"]["scav"]["schema_minor"]
    (path / "zarr.json").write_text(json.dumps(root))
    fc = FeatureCache.open(path)
    assert fc.meta.layout.checksums is False and fc.meta.schema_minor == 0
    assert CacheLayout.from_dict({}).checksums is False
    assert len(list(iter_eval_batches(fc, "train", batch_size=4))) == 2
    assert verify_cache(path).healthy


def test_repair_when_a_part_of_that_name_was_set_aside_before(cache, capsys):
    """Issue 23: `verify --repair` with `.damaged/<part>` already there (an earlier repair) keeps both;
    the last line says the damaged parts were set aside, not that they are still there."""
    name, clips = _damage(cache, KINDS[0])
    (cache / ".damaged" / name).mkdir(parents=True)
    (cache / ".damaged" / name / "earlier.txt").write_text("from an earlier repair")
    capsys.readouterr()
    assert cli("verify", str(cache), "--repair") == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.endswith("1 damaged part(s), all set aside"), last
    assert (cache / ".damaged" / name / "earlier.txt").is_file() and (cache / ".damaged" / f"{name}.1").is_dir()
    assert (cache / ".damaged" / f"{name}.1.why.json").is_file()
    assert cli("verify", str(cache)) == 0
