"""The HTML search report: assets that exist (once per clip), taken at the stored frame times and the
clip's own audio, missing media said in place, escaping, and the page as Chromium shows it."""

from __future__ import annotations

import copy
import os
import shutil
import wave
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from report_browser import Browser, find_chromium
from report_screenshot import build_sample

from scav.core.cache import FeatureCache
from scav.extract.decode import decode_clip
from scav.retrieve import report_html
from scav.retrieve.report_html import write_report

THUMBS = 4
AUDIO_S = 1.0


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def tags(page: Path, name: str) -> list[dict]:
    p = _Tags()
    p.feed(page.read_text(encoding="utf-8"))
    return [a for t, a in p.tags if t == name]


def sources(page: Path) -> list[str]:
    return [a["src"] for t in ("img", "audio", "source", "video", "script") for a in tags(page, t)]


def assert_sources_exist(page: Path) -> None:
    for src in sources(page):
        assert "://" not in src and not src.startswith("/") and ".." not in src, src  # inside the folder
        assert (page.parent / src).is_file(), f"{src} is referenced but missing"


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return build_sample(tmp_path_factory.mktemp("report-sample"))


def render(sample, out: Path, records=None, **kw) -> Path:
    kw = {"cache_path": sample.cache, "media_root": sample.media_root, "summary": sample.summary,
          "thumbs": THUMBS, "audio_seconds": AUDIO_S, "progress": False, **kw}
    return write_report(sample.records if records is None else records, out, **kw)


@pytest.fixture(scope="module")
def report(sample, tmp_path_factory):
    return render(sample, tmp_path_factory.mktemp("report") / "out")


def test_assets_exist_once_per_clip(sample, report):
    assert_sources_exist(report)
    shown = {r["clip_id"] for rec in sample.records for r in [rec["query"], *rec["results"]]}
    assets = report.parent / "assets"
    # a clip in several lists is written once: one wav and THUMBS jpgs per distinct clip
    assert len(list(assets.glob("*.wav"))) == len(shown)
    assert len(list(assets.glob("*.jpg"))) == THUMBS * len(shown)
    assert (assets / "k_curve.png").is_file() and "assets/k_curve.png" in sources(report)
    n_rows = sum(len(rec["results"]) + 1 for rec in sample.records)
    assert len(tags(report, "audio")) == n_rows and len(tags(report, "img")) == THUMBS * n_rows + 1
    assert len(tags(report, "script")) == 0  # a static page
    text = report.read_text()
    assert "stand-in encoders" in text and "runs/sample/ckpt-000200.pt" in text
    assert text.count("✔ true partner") == 2  # the third query's partner is outside its list
    assert "the true partner is not among the top 4" in text


def test_thumbnails_at_stored_times_and_audio_of_the_window(sample, report):
    cache = FeatureCache.open(sample.cache)
    q = sample.records[0]["query"]
    stored = cache.get(q["clip_id"]).video_times
    strip = [a for a in tags(report, "img") if a["src"].endswith(".jpg")][:THUMBS]  # the first query's strip
    shown = [float(a["alt"].split()[2]) for a in strip]
    want = stored[np.round(np.linspace(0, len(stored) - 1, THUMBS)).astype(int)]
    np.testing.assert_allclose(shown, want, atol=0.006)  # alt text has 2 decimals
    # the wav is the window's first AUDIO_S seconds of track 0, as the extractor decoded them
    wav = report.parent / tags(report, "audio")[0]["src"]
    with wave.open(str(wav)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 16000)
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    ref = decode_clip(sample.media_root / q["path"], q["start"], q["end"]).audio[0].samples[: int(AUDIO_S * 16000)]
    assert len(pcm) == int(AUDIO_S * 16000) and np.abs(ref).max() > 0.01
    np.testing.assert_allclose(pcm / 32767.0, ref, atol=1.5 / 32767)


def test_long_windows_decoded_per_thumbnail_give_the_same_assets(sample, report, tmp_path, monkeypatch):
    monkeypatch.setattr(report_html, "WINDOW_DECODE_S", 0.0)  # every window is "long"
    other = render(sample, tmp_path / "out")
    a, b = report.parent / "assets", other.parent / "assets"
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for n in names:
        if n != "k_curve.png":  # matplotlib embeds no clock, but the curve is not what this tests
            assert (a / n).read_bytes() == (b / n).read_bytes(), n


@pytest.fixture(scope="module")
def damaged(sample, tmp_path_factory):
    """The sample's media copied with one of its two source files deleted, and one result
    pointed at a file that is not media."""
    root = tmp_path_factory.mktemp("media")
    shutil.copytree(sample.media_root / "media", root / "media")
    gone = sorted({r["path"] for rec in sample.records for r in rec["results"]})[0]
    (root / gone).unlink()
    garbage = "media/garbage.mp4"
    (root / garbage).write_bytes(b"not an mp4" * 100)
    records = copy.deepcopy(sample.records)
    records[1]["results"][-1]["path"] = garbage
    out = render(sample, tmp_path_factory.mktemp("damaged") / "out", records=records, media_root=root)
    return out, root, gone, garbage, records


def test_missing_and_undecodable_media_are_said_in_place(damaged):
    page, root, gone, garbage, records = damaged
    text = page.read_text()
    assert f"media not found: {root / gone}" in text
    assert f"media cannot be decoded: {root / garbage}" in text
    assert_sources_exist(page)  # no element points at a file that is not there
    rows = [r for rec in records for r in [rec["query"], *rec["results"]]]
    ok = sum(r["path"] not in (gone, garbage) for r in rows)
    assert 0 < ok < len(rows) and len(tags(page, "audio")) == ok  # everything else is still shown
    assert len(tags(page, "img")) == THUMBS * ok + 1
    assert "✔ true partner" in text and "Query 3" in text


def test_every_string_is_escaped(sample, tmp_path):
    records = copy.deepcopy(sample.records[:1])
    records[0]["results"][1]["label"] = "<script>alert('x')</script>"
    records[0]["query"]["source"] = 'a"b<i>'
    records[0]["checkpoint"] = "<b>ckpt</b>"
    page = render(sample, tmp_path / "out", records=records, summary={"title": "<h1>t</h1>"})
    text = page.read_text()
    assert "<script>" not in text and "<i>" not in text and "<b>ckpt" not in text and "<h1>t" not in text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in text and "a&quot;b&lt;i&gt;" in text


def test_missing_audio_track_is_said_and_frames_still_shown(sample, tmp_path):
    records = copy.deepcopy(sample.records[:1])
    records[0]["query"]["track"] = "zzz"  # a language tag no clip has
    page = render(sample, tmp_path / "out", records=records)
    assert "no audio track &#x27;zzz&#x27;" in page.read_text()
    assert tags(page, "audio") == [] and len(tags(page, "img")) > THUMBS
    assert_sources_exist(page)


def test_refuses_to_replace_a_folder_that_is_not_a_report(sample, tmp_path):
    (tmp_path / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError):
        render(sample, tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "keep"


# ----------------------------------------------------------------------------- in a browser

needs_chromium = pytest.mark.skipif(
    find_chromium() is None and not os.environ.get("CI"),  # CI installs chromium: absent there is a failure
    reason="chromium not installed (Debian: apt-get install chromium); the page is not checked in a browser",
)


@pytest.fixture(scope="module")
def browser():
    with Browser(size=(1280, 1800)) as b:
        yield b


@needs_chromium
def test_page_loads_in_chromium(browser, report, damaged, tmp_path):
    shot = tmp_path / "search_report.png"
    for page in (report, damaged[0]):
        v = browser.inspect(page, screenshot=shot if page == report else None)
        assert v["errors"] == [], v["errors"]
        assert len(v["images"]) == len(tags(page, "img")) > 0
        assert all(i["complete"] and i["width"] > 0 for i in v["images"]), v["images"]
        assert len(v["audios"]) == len(tags(page, "audio")) > 0
        assert all(a["error"] is None and a["readyState"] >= 1 for a in v["audios"]), v["audios"]
        assert abs(v["audios"][0]["duration"] - AUDIO_S) < 0.01
    assert "media not found" in v["text"]  # the damaged page, as rendered text
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(shot.read_bytes()[16:20], "big") == 1280  # PNG IHDR width


@needs_chromium
def test_the_browser_check_sees_a_broken_page(browser, tmp_path):
    """The check above can fail: a missing image, a missing wav and a script error are all caught."""
    page = tmp_path / "bad.html"
    page.write_text('<!doctype html><body><img src="no.jpg"><audio src="no.wav" preload="metadata"></audio>'
                    "<script>undefinedFunction()</script></body>")
    v = browser.inspect(page)
    assert v["images"][0]["width"] == 0 and v["audios"][0]["error"] is not None
    assert any("Uncaught" in e and "undefinedFunction" in e for e in v["errors"])
    assert any("no.jpg" in e for e in v["errors"]) and any("no.wav" in e for e in v["errors"])


def test_media_outside_the_media_root_is_not_read(sample, tmp_path):
    """Issue 23: a cache row pointing at an absolute path elsewhere, or climbing out of --media-root
    with '..', is shown as outside and never read or copied; the stats count clips without media."""
    root = tmp_path / "root"
    shutil.copytree(sample.media_root / "media", root / "media")
    outside = tmp_path / "outside"
    shutil.copytree(sample.media_root / "media", outside)
    some = sorted({r["path"] for rec in sample.records for r in rec["results"]})[0]
    records = copy.deepcopy(sample.records)
    records[0]["results"][0]["path"] = str(outside / Path(some).name)  # absolute, elsewhere
    records[1]["results"][0]["path"] = f"../outside/{Path(some).name}"  # climbs out
    stats: dict = {}
    page = render(sample, tmp_path / "out", records=records, media_root=root, stats=stats)
    text = page.read_text()
    assert text.count("media outside --media-root") == 2
    assert_sources_exist(page)
    assert stats["no_media"] == 2 and stats["clips"] > 2
    full = render(sample, tmp_path / "full", stats=(s := {}))
    assert s["no_media"] == 0 and "outside --media-root" not in full.read_text()
