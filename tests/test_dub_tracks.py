"""Dub tracks end to end: container streams with dispositions and manifest track files -> cache tracks.

Each track carries a pure tone at its own frequency, so which stored track came
from which stream or file is read back from the features themselves (the
strongest mel bin), not from the code that placed it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cache_factory import assert_same_contents, cache_contents

from scav.core.cache import FeatureCache
from scav.core.schema import AudioTrack, ClipInfo
from scav.data_manifests.manifest import (
    ManifestError,
    ManifestRow,
    TrackFile,
    load_manifest,
    parse_audio_tracks,
    write_manifest,
)
from scav.data_manifests.media import AudioSpec, write_media
from scav.extract.decode import original_flags
from scav.extract.encoders import audio_steps
from scav.extract.runner import ExtractConfig, run

SECONDS = 2.0
FPS = 25
TONES = {"spa": 400.0, "eng": 800.0, "fra": 1600.0, "deu": 3200.0, "ita": 1600.0}


def tone(lang: str, seconds: float = SECONDS, sr: int = 48000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * TONES[lang] * t))[None, :].astype(np.float32)


def frames(seconds: float = SECONDS) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (int(seconds * FPS), 24, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("dubs")
    # original in the middle: the rule must find it, not assume the first stream
    write_media(d / "film.mp4", frames(), FPS, audio=[
        AudioSpec(tone("spa"), 48000, "spa", dub=True),
        AudioSpec(tone("eng"), 48000, "eng", original=True),
        AudioSpec(tone("fra"), 48000, "fra", dub=True),
    ])
    # Matroska keeps the 'original' flag itself (mp4 keeps only 'dub'): the flag alone decides
    write_media(d / "flagged.mkv", frames(), FPS, audio=[
        AudioSpec(tone("spa"), 48000, "spa"), AudioSpec(tone("eng"), 48000, "eng", original=True)])
    write_media(d / "plain.mp4", frames(), FPS, audio=[AudioSpec(tone("eng"), 48000, "eng")])
    write_media(d / "dubs" / "film_deu.m4a", None, audio=[AudioSpec(tone("deu", sr=44100), 44100, "und")])
    write_media(d / "dubs" / "plain_ita.m4a", None, audio=[AudioSpec(tone("ita", sr=16000), 16000)])
    write_media(d / "dubs" / "short_deu.m4a", None, audio=[AudioSpec(tone("deu", 1.0), 48000)])
    write_media(d / "dubs" / "silent.mp4", frames(), FPS)  # a track file without audio
    return d


def strongest_bin(audio: np.ndarray) -> int:
    """The mel bin with most energy, from stored fbank features (S, 16 * 128)."""
    x = np.asarray(audio, dtype=np.float64)
    return int(x.reshape(len(x), 16, 128).mean(axis=(0, 1)).argmax())


def test_original_flags_rule():
    # (original, dub) per stream
    assert original_flags([(False, False), (False, False)]) == [True, False]  # no dispositions: first
    assert original_flags([(False, True), (False, False), (False, True)]) == [False, True, False]  # mp4: not-dub
    assert original_flags([(False, False), (True, False)]) == [False, True]  # the flag wins
    assert original_flags([(False, True), (False, True)]) == [False, False]  # all dubs: none
    assert original_flags([]) == []


def test_dispositions_written_and_read(media):
    import av
    from av.stream import Disposition

    with av.open(str(media / "film.mp4")) as c:
        dubs = [bool(s.disposition & Disposition.dub) for s in c.streams.audio]
        langs = [s.metadata.get("language") for s in c.streams.audio]
    assert dubs == [True, False, True] and langs == ["spa", "eng", "fra"]
    with av.open(str(media / "flagged.mkv")) as c:
        assert [bool(s.disposition & Disposition.original) for s in c.streams.audio] == [False, True]
    with av.open(str(media / "plain.mp4")) as c:  # no flags asked, none written
        assert not c.streams.audio[0].disposition & (Disposition.original | Disposition.dub)
    with pytest.raises(ValueError):
        AudioSpec(tone("eng"), 48000, original=True, dub=True).disposition()


@pytest.fixture(scope="module")
def manifest(media) -> Path:
    rows = [
        ManifestRow("film", "film.mp4", split="train", audio_tracks=(TrackFile("deu", "dubs/film_deu.m4a"),)),
        ManifestRow("film_win", "film.mp4", start=0.4, end=1.6, split="train",
                    audio_tracks=(TrackFile("deu", "dubs/film_deu.m4a"),)),
        ManifestRow("flagged", "flagged.mkv", split="train"),
        ManifestRow("plain", "plain.mp4", split="train",
                    audio_tracks=(TrackFile("ita", "dubs/plain_ita.m4a", original=True),)),
        ManifestRow("plain_only", "plain.mp4", split="val"),
    ]
    return write_manifest(rows, media / "m.csv")


EXPECTED = {  # clip -> [(language, original, tone)] in track order
    "film": [("spa", False, "spa"), ("eng", True, "eng"), ("fra", False, "fra"), ("deu", False, "deu")],
    "film_win": [("spa", False, "spa"), ("eng", True, "eng"), ("fra", False, "fra"), ("deu", False, "deu")],
    "flagged": [("spa", False, "spa"), ("eng", True, "eng")],
    # the manifest's '*' overrides the container's default (first stream)
    "plain": [("eng", False, "eng"), ("ita", True, "ita")],
    "plain_only": [("eng", True, "eng")],
}


@pytest.fixture(scope="module")
def extracted(manifest, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("cache") / "f.zarr"
    return out, run(ExtractConfig(manifest=manifest, out=out, progress=False, part_clips=2, decode_workers=0))


def test_every_track_stored_with_language_flag_and_steps(extracted):
    out, summary = extracted
    assert summary["extracted"] == len(EXPECTED) and summary["failed"] == 0, summary["failures"]
    cache = FeatureCache.open(out)
    bins = {}
    for cid, want in EXPECTED.items():
        info = cache.info(cid)
        assert [(t.language, t.original) for t in info.tracks] == [(lang, orig) for lang, orig, _ in want], cid
        assert [t.index for t in info.tracks] == list(range(len(want)))
        assert info.original_track() == [orig for _, orig, _ in want].index(True)
        lo, hi = info.start or 0.0, info.end or SECONDS
        for j, (lang, _, tone_of) in enumerate(want):
            audio = cache.get(cid, track=j).audio
            assert info.tracks[j].n_steps == len(audio) == audio_steps(int(round((hi - lo) * 16000))), (cid, j)
            bins.setdefault(tone_of, set()).add(strongest_bin(audio))
        assert cache.get(cid, track=want[-1][0]).audio.shape == cache.get(cid, track=len(want) - 1).audio.shape
    # each tone lands in one mel bin everywhere, and higher tones in higher bins: no track swapped
    assert all(len(b) == 1 for b in bins.values()), bins
    order = [next(iter(bins[k])) for k in ("spa", "eng", "fra", "deu")]
    assert order == sorted(order) and len(set(order)) == 4
    assert bins["ita"] == bins["fra"]  # same frequency (1600 Hz), other file and sample rate


def test_process_pool_stores_the_same(manifest, extracted, tmp_path):
    """The decode-process path (track files decoded in a worker) stores what the in-process path does."""
    run(ExtractConfig(manifest=manifest, out=tmp_path / "b.zarr", progress=False, decode_workers=1))
    assert_same_contents(cache_contents(extracted[0]), cache_contents(tmp_path / "b.zarr"))


def test_bad_track_files_are_failure_rows_and_nothing_half_written(media, tmp_path):
    rows = [
        ManifestRow("ok", "film.mp4", split="test", audio_tracks=(TrackFile("deu", "dubs/film_deu.m4a"),)),
        ManifestRow("missing", "film.mp4", split="test", audio_tracks=(TrackFile("deu", "dubs/nope.m4a"),)),
        ManifestRow("no_audio", "plain.mp4", split="test", audio_tracks=(TrackFile("deu", "dubs/silent.mp4"),)),
        ManifestRow("too_short", "film.mp4", start=1.5, end=2.0, split="test",
                    audio_tracks=(TrackFile("deu", "dubs/short_deu.m4a"),)),
    ]
    out = tmp_path / "f.zarr"
    summary = run(ExtractConfig(manifest=write_manifest(rows, tmp_path / "m.csv"), out=out, progress=False,
                                media_root=media))
    fails = {f["clip_id"]: f for f in summary["failures"]}
    assert summary["extracted"] == 1 and set(fails) == {"missing", "no_audio", "too_short"}
    assert fails["missing"]["stage"] == "open" and "nope.m4a" in fails["missing"]["reason"]
    assert fails["no_audio"]["stage"] == "decode-audio" and "silent.mp4" in fails["no_audio"]["reason"]
    assert fails["too_short"]["stage"] == "range" and "short_deu.m4a" in fails["too_short"]["reason"]
    cache = FeatureCache.open(out)
    assert [c.clip_id for c in cache.clips()] == ["ok"] and len(cache.info("ok").tracks) == 4
    assert {f.clip_id for f in cache.failures()} == set(fails)
    staging = out / ".staging"
    assert not staging.exists() or not any(p.is_file() for p in staging.rglob("*"))


def test_manifest_column_round_trip_and_old_manifests_unchanged(tmp_path):
    plain = [ManifestRow("a", "a.mp4", split="train"), ManifestRow("b", "b.mp4", 1.0, 2.0, "val", "x", "s")]
    text = write_manifest(plain, tmp_path / "plain.csv").read_text()
    assert text.splitlines()[0] == "clip_id,path,start,end,split,label,source"  # no new column
    dubbed = [plain[0], ManifestRow("c", "c.mp4", split="train", audio_tracks=(
        TrackFile("eng", "dubs/c eng.m4a", original=True), TrackFile("pt-BR", "/abs/c=pt.m4a")))]
    path = write_manifest(dubbed, tmp_path / "dubbed.csv")
    assert path.read_text().splitlines()[2].endswith(",*eng=dubs/c eng.m4a;pt-BR=/abs/c=pt.m4a")
    assert load_manifest(path) == dubbed
    assert dubbed[1].audio_tracks[0].resolve(tmp_path) == tmp_path / "dubs/c eng.m4a"
    assert parse_audio_tracks(" *eng = x.m4a ; spa=y.m4a ") == (
        TrackFile("eng", "x.m4a", True), TrackFile("spa", "y.m4a"))


def test_bad_audio_tracks_syntax_names_each_line(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text(
        "clip_id,path,split,audio_tracks\n"
        "a,a.mp4,train,eng=a_eng.m4a;spa=a_spa.m4a\n"  # fine
        "b,b.mp4,train,eng=b1.m4a;ENG=b2.m4a\n"  # duplicate tag (case-insensitive)
        "c,c.mp4,train,c_eng.m4a\n"  # no tag
        "d,d.mp4,train,*eng=d1.m4a;*spa=d2.m4a\n"  # two originals
        "e,e.mp4,train,e n=e.m4a\n"  # bad tag
        "f,f.mp4,train,eng=f.m4a;;spa=g.m4a\n"  # empty entry
        "g,g.mp4,train,eng=\n"  # empty path
        "h,h.mp4,train,\n"  # no tracks: fine
    )
    with pytest.raises(ManifestError) as e:
        load_manifest(path)
    msg = str(e.value)
    assert "6 bad line(s)" in msg
    for line, what in ((3, "twice"), (4, "tag=path"), (5, "more than one"), (6, "bad language tag"),
                       (7, "entry 2"), (8, "tag=path")):
        hit = [m for m in msg.splitlines() if f"line {line}:" in m]
        assert hit and what in hit[0], (line, msg)
    assert "line 2:" not in msg and "line 9:" not in msg


def test_old_clip_tables_open(extracted, tmp_path):
    """A cache written before the flag existed (no 'original' key) opens; flags read False, track 0 leads."""
    out = tmp_path / "f.zarr"
    shutil.copytree(extracted[0], out)
    fingerprint = FeatureCache.open(out).meta.fingerprint()
    for meta_file in (out / "parts").glob("p-*/zarr.json"):
        doc = json.loads(meta_file.read_text())
        for clip in doc["attributes"]["clips"]:
            for t in clip["tracks"]:
                del t["original"]
        meta_file.write_text(json.dumps(doc))
    cache = FeatureCache.open(out)
    assert cache.meta.fingerprint() == fingerprint
    info = cache.info("film")
    assert [t.original for t in info.tracks] == [False] * 4 and info.original_track() == 0
    assert [t.language for t in info.tracks] == ["spa", "eng", "fra", "deu"]
    assert len(cache.get("film", track="deu").audio) == info.tracks[3].n_steps
    # the dict form round-trips the flag, and a dict without it still loads
    new = ClipInfo("x", "train", tracks=[AudioTrack(0, "eng", 3), AudioTrack(1, "spa", 3, original=True)])
    assert ClipInfo.from_dict(new.to_dict()) == new and new.original_track() == 1
    old = ClipInfo.from_dict({"clip_id": "y", "split": "t", "tracks": [{"index": 0, "n_steps": 2}]})
    assert old.tracks[0].original is False and old.original_track() == 0
