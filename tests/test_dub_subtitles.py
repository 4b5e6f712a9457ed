"""Subtitles as the transcript: the weight-free route of scav-dub for real media (issue 24).

The cue readers against hand-written SRT/WebVTT files, the cue-to-segment assignment against
a hand-worked case, and the whole CLI on a media file that is *not* a synthetic build: an mp4
written with data_manifests/media.py whose English speech is espeak-ng over a hum and noise,
its script in an SRT file, dubbed with ``--separator spectral --segmenter vad --subtitles``.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import require_program
from typer.testing import CliRunner

from scav.data_manifests.manifest import ManifestRow, load_manifest, write_manifest
from scav.dub.cli import app
from scav.dub.stages import Audio, Segment, StageError
from scav.dub.subtitles import Subtitles, read_cues, subtitle_candidates

pytest.importorskip("pysubs2", reason="pysubs2 (scav's [dub] extra) reads the subtitle files")

SR = 16000
SRT = """1
00:00:00,500 --> 00:00:01,900
<i>Hello</i> good
world

2
00:00:02,600 --> 00:00:04,100
the water is cold

"""
VTT = """WEBVTT

NOTE a comment block, not a cue

intro
00:00:00.500 --> 00:00:01.900 align:start
Hello good
world

NOTE between cues

00:00:02.600 --> 00:00:04.100
<v Ann>the water is cold</v>
"""


def test_srt_and_webvtt_cues_read_alike(tmp_path):
    (tmp_path / "a.srt").write_text(SRT, encoding="utf-8")
    (tmp_path / "a.vtt").write_text(VTT, encoding="utf-8")
    want = [Segment(0.5, 1.9, "Hello good world", "eng"), Segment(2.6, 4.1, "the water is cold", "eng")]
    assert read_cues(tmp_path / "a.srt", "eng") == want
    assert read_cues(tmp_path / "a.vtt", "eng") == want
    (tmp_path / "bad.srt").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(StageError, match="cannot read subtitles"):
        read_cues(tmp_path / "bad.srt")


def test_subtitle_file_is_found_by_the_manifest_path(tmp_path):
    names = [p.relative_to(tmp_path).as_posix() for p in subtitle_candidates(tmp_path, "films/a.mp4")]
    assert names[:2] == ["films/a.srt", "films/a.vtt"] and "films/a.mp4.srt" in names
    assert subtitle_candidates(tmp_path, "/abs/b.mkv")[0] == tmp_path / "b.srt"
    assert subtitle_candidates(tmp_path, "../up/c.mp4")[0] == tmp_path / "c.srt"


def test_cues_go_to_the_segment_they_overlap_most(tmp_path):
    (tmp_path / "a.srt").write_text(SRT, encoding="utf-8")
    info = type("Info", (), {"rows": (ManifestRow("c", "a.mp4"),)})()
    bound = Subtitles(tmp_path).for_media(info)
    speech = Audio(np.zeros(5 * SR, np.float32), SR)
    assert [(s.start, s.end, s.text) for s in bound.segment(speech, "en")] == \
        [(0.5, 1.9, "Hello good world"), (2.6, 4.1, "the water is cold")]
    vad = [Segment(0.4, 1.0), Segment(1.1, 2.0), Segment(2.5, 4.3), Segment(4.5, 4.9)]
    # cue 1 overlaps [0.4, 1.0] by 0.5 s and [1.1, 2.0] by 0.8 s: the second; cue 2 the third
    got = bound.transcribe(speech, vad, "eng")
    assert [s.text for s in got] == ["", "Hello good world", "the water is cold", ""]
    assert [(s.start, s.end) for s in got] == [(s.start, s.end) for s in vad] and got[1].language == "eng"
    with pytest.raises(StageError, match="no subtitle file for b.mp4"):
        Subtitles(tmp_path).for_media(type("Info", (), {"rows": (ManifestRow("c", "b.mp4"),)})())


@pytest.fixture
def espeak():
    require_program(shutil.which("espeak-ng") is not None, "espeak-ng", "espeak-ng")


def _real_media(folder):
    """An mp4 of 5 s: 32x32 frames, one English track (espeak-ng speech at the SRT's times over a hum
    and noise), tagged eng. Written by the media writer, not the synthetic generator."""
    from scav.data_manifests.media import AudioSpec, write_media
    from scav.dub.tts import EspeakSynthesizer

    rng = np.random.default_rng(0)
    n = 5 * SR
    t = np.arange(n) / SR
    track = 0.03 * np.sin(2 * np.pi * 110 * t) + 0.005 * rng.standard_normal(n)
    tts = EspeakSynthesizer()
    for cue in read_cues_from_text(SRT):
        x = tts.synthesize(cue.text, "eng", SR).samples
        i0 = int(cue.start * SR)
        x = x[: int((cue.end - cue.start) * SR)]
        track[i0: i0 + len(x)] += 0.5 * x / max(1e-6, float(np.max(np.abs(x))))
    frames = rng.integers(0, 255, (125, 32, 32, 3), dtype=np.uint8)
    path = folder / "films" / "talk.mp4"
    write_media(path, frames, fps=25.0, audio=[AudioSpec(track[None].astype(np.float32), SR, "eng")])
    return path


def read_cues_from_text(text: str) -> list[Segment]:
    import pysubs2

    return [Segment(e.start / 1000, e.end / 1000, " ".join(e.plaintext.split())) for e in pysubs2.SSAFile.from_string(text)]


def test_real_media_with_subtitles_and_no_weights(tmp_path, espeak):
    """`--separator spectral --segmenter vad --subtitles DIR` on a non-synthetic file: done, the new
    track tagged fra, the segments' text is the subtitles', the whole track as loud as the original."""
    data = tmp_path / "data"
    _real_media(data)
    write_manifest([ManifestRow("talk-0", "films/talk.mp4", 0.0, 5.0, split="test")], data / "manifest.csv")
    (tmp_path / "subs" / "films").mkdir(parents=True)
    (tmp_path / "subs" / "films" / "talk.srt").write_text(SRT, encoding="utf-8")
    r = CliRunner().invoke(app, [str(a) for a in (
        data / "manifest.csv", "--out", tmp_path / "out", "-t", "fr", "--separator", "spectral", "--segmenter",
        "vad", "--subtitles", tmp_path / "subs", "--keep-stages", tmp_path / "keep", "--no-progress",
        "--json", tmp_path / "s.json")])
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "s.json").read_text())
    assert (s["done"], s["failed"]) == (1, 0), s["failures"]
    assert s["stages"]["transcriber"] == "subtitles" and s["stages"]["separator"].startswith("spectral")
    q = s["quality"][0]
    assert q["language"] == "fra" and q["checks"]["loudness"]["passed"] and q["checks"]["duration"]["passed"]
    segs = json.loads((tmp_path / "keep" / "films" / "talk.mp4" / "fra" / "segments.json").read_text())
    texts = " ".join(e["text"] for e in segs if e["text"])
    assert "Hello good world" in texts and "the water is cold" in texts
    assert any(e["translation"] and "eau" in e["translation"] for e in segs)  # the dictionary's word for water
    assert [r.clip_id for r in load_manifest(tmp_path / "out" / "manifest.csv")] == ["talk-0"]
    from scav.extract.decode import decode_clip

    clip = decode_clip(tmp_path / "out" / "media" / "films" / "talk.mp4")
    assert [(t.language, t.original) for t in clip.audio] == [("eng", True), ("fra", False)]
