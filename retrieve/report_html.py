"""A static HTML page of `scav-retrieve search` results: see and hear each query and its top results.

Layout (``out_dir``)::

    index.html                      header (checkpoint, encoders, method), summary, one section per query
    assets/k_curve.png              recall and time against k (when the summary has a k curve)
    assets/<clip key>-f<i>.jpg      thumbnails, at evenly spread *stored* frame times of the clip's window
    assets/<clip key>.wav           the window's first ``audio_seconds``, 16 kHz mono, the searched track

Nothing points outside the folder (no scripts, no external URLs), so the page opens
offline and can be copied as one folder. A clip in several result lists is decoded
and written once. Media paths are the cache's clip-table paths, which are relative to
the manifest's folder (``ManifestRow.path``); the cache does not record that folder, so
the caller passes it as ``media_root`` (what `scav-extract` used). A clip whose media is
missing or undecodable gets a message in its place and no <img>/<audio> element.

Decoding goes through :func:`scav.extract.decode.decode_clip` (PyAV, the [extract]
extra), the decoder that wrote the cache, so stored frame times are frame pts here too.
"""

from __future__ import annotations

import hashlib
import html
import importlib.util
import json
import logging
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scav.core.files import atomic_path

log = logging.getLogger(__name__)

THUMB_SIDE = 160  # px, longer side of a thumbnail (frames are downscaled while decoding)
WINDOW_DECODE_S = 60.0  # longer windows: one short decode per thumbnail, not the whole window in memory
PROBE_S = 1.0  # per-thumbnail decode spans [t, t + PROBE_S): holds a frame at any fps >= 1
AUDIO_RATE = 16000
ASSETS = "assets"


def write_report(records: list[dict], out_dir: str | Path, *, cache_path: str | Path | None = None,
                 summary: dict | None = None, thumbs: int = 6, audio_seconds: float = 4.0,
                 media_root: str | Path | None = None, progress: bool = True, stats: dict | None = None) -> Path:
    """Write ``out_dir/index.html`` (+ ``assets/``) for search ``records``; returns the index.html path.

    records: `scav-retrieve search` JSON objects (one per query). cache_path: the cache the
    search ran on, for each clip's stored frame times (without it, or for a clip not in
    it, the decoded frames' own times are spread). media_root: folder that relative media
    paths are relative to (None: the working directory); only media inside it is read and
    copied into the report (an absolute path elsewhere, or one that climbs out with ``..``
    or a symlink, is shown as "outside --media-root", never read). stats: filled with
    {"clips": clips shown, "no_media": clips whose media was missing, outside or undecodable}.
    The folder is built under a temporary name and renamed, so a killed run leaves the
    previous report intact.
    """
    if importlib.util.find_spec("av") is None:
        raise ModuleNotFoundError("the HTML report decodes media with PyAV, which is in the [extract] "
                                  "extra: pip install 'scav[extract]'")
    if thumbs < 1 or audio_seconds <= 0:
        raise ValueError(f"thumbs must be >= 1 and audio_seconds > 0, got {thumbs}, {audio_seconds}")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "index.html").is_file():
        # the folder is replaced as a whole: never wipe a folder that is not a report
        raise FileExistsError(f"{out_dir} exists and is not a report folder (no index.html); choose another")
    from tqdm.auto import tqdm

    with atomic_path(out_dir) as tmp:
        (tmp / ASSETS).mkdir(parents=True)
        media = _Media(tmp, cache_path, media_root, thumbs, audio_seconds)
        body = [_header(records, summary or {}), _summary(summary or {}, tmp)]
        for i, rec in enumerate(tqdm(records, desc="report", unit="query", disable=not progress)):
            body.append(_query_section(i, rec, media))
        (tmp / "index.html").write_text(_page((summary or {}).get("title") or "SCAV search report", body),
                                        encoding="utf-8")
    if stats is not None:
        stats.update(clips=len(media.done), no_media=len(media.no_media))
    return out_dir / "index.html"


# ----------------------------------------------------------------------------- media


@dataclass(frozen=True)
class _Clip:
    """One clip window to show; equal clips share their assets."""

    path: str
    start: float | None
    end: float | None
    track: int | str
    clip_id: str | None = None


class _Media:
    """Decodes each clip once and keeps the HTML fragment that shows it."""

    def __init__(self, root: Path, cache_path, media_root, thumbs: int, audio_seconds: float):
        self.root = root
        self.thumbs = thumbs
        self.audio_seconds = audio_seconds
        self.media_root = Path(media_root) if media_root is not None else None
        self.root_dir = (self.media_root or Path.cwd()).resolve()
        self.no_media: set[_Clip] = set()
        self.cache = None
        if cache_path is not None:
            from scav.core.cache import FeatureCache

            self.cache = FeatureCache.open(cache_path)
        self.done: dict[_Clip, str] = {}

    def fragment(self, clip: _Clip) -> str:
        if clip not in self.done:
            html, ok = self._render(clip)
            self.done[clip] = html
            if not ok:
                self.no_media.add(clip)
        return self.done[clip]

    def _stored(self, clip_id: str | None):
        """(ClipInfo, stored frame times) from the cache, or (None, None)."""
        from scav.core.schema import CacheError

        if self.cache is None or clip_id is None or clip_id not in self.cache:
            return None, None
        try:
            pi, row = self.cache.locate(clip_id)  # the times alone: FeatureCache.get would read the features too
            return self.cache.info(clip_id), np.asarray(self.cache.parts[pi].read_times(row), dtype=np.float64)
        except CacheError as e:  # a damaged part: the decoded frames' own times still make a strip
            log.warning("stored frame times of %s unreadable, using decoded times: %s", clip_id, e)
            return self.cache.info(clip_id), None

    def _render(self, clip: _Clip) -> tuple[str, bool]:
        """(HTML of the clip's frames and audio, or of a note saying why there are none; media shown?)"""
        from scav.extract.decode import DecodeError

        info, stored = self._stored(clip.clip_id)
        rel = clip.path or (info.path if info else "")
        if not rel:
            return _note("media path not recorded"), False
        path = Path(rel) if Path(rel).is_absolute() or self.media_root is None else self.media_root / rel
        try:
            inside = path.resolve().is_relative_to(self.root_dir)
        except (OSError, RuntimeError):  # a symlink loop
            inside = False
        if not inside:
            return _note(f"media outside --media-root ({self.root_dir}), not read: {path}"), False
        if not path.is_file():
            return _note(f"media not found: {path}"), False
        length = (clip.end - clip.start if clip.end is not None and clip.start is not None
                  else info.duration if info else None)
        try:
            frames, audio = _decode(path, clip, stored, self.thumbs, self.audio_seconds, length)
        except DecodeError as e:
            return _note(f"media cannot be decoded: {path} ({e})"), False
        key = hashlib.sha1(json.dumps([str(path), clip.start, clip.end, clip.track]).encode()).hexdigest()[:16]
        return _strip(self.root, key, frames) + _audio(self.root, key, audio), True


def _spread(times: np.ndarray, n: int) -> np.ndarray:
    """At most ``n`` of ``times``, evenly spread from the first to the last."""
    if len(times) <= n:
        return times
    return times[np.unique(np.round(np.linspace(0, len(times) - 1, n)).astype(int))]


def _pick_track(tracks: list, track: int | str):
    """The decoded track ``schema.ClipInfo.find_track`` picks (index or language tag), or None."""
    from scav.core.schema import AudioTrack, ClipInfo

    probe = ClipInfo("", "", tracks=[AudioTrack(j, t.language) for j, t in enumerate(tracks)])
    j = probe.find_track(track)
    return None if j is None else tracks[j]


def _decode(path: Path, clip: _Clip, stored, n: int, audio_seconds: float, length: float | None):
    """([(time, (H, W, 3) uint8)], (S,) float32 samples or a message) for one clip window.

    A window of up to WINDOW_DECODE_S seconds (or of unknown length) is decoded once and
    frames are picked from it; a longer one gets one short decode per thumbnail and one
    for the audio, so memory does not grow with the window.
    """
    from scav.extract.decode import decode_clip

    lo = clip.start or 0.0
    if length is None or length <= WINDOW_DECODE_S:
        dec = decode_clip(path, clip.start, clip.end, max_side=THUMB_SIDE)
        want = _spread(stored if stored is not None and len(stored) else dec.frame_times, n)
        idx = [int(np.argmin(np.abs(dec.frame_times - t))) for t in want]  # stored times are pts of these frames
        frames = [(float(dec.frame_times[i]), dec.frames[i]) for i in idx]
        tracks, a0 = dec.audio, dec.start
    else:
        if stored is not None and len(stored):
            want = _spread(stored, n)
        else:
            want = lo + length * np.arange(n) / n
        frames = []
        for t in want:
            dec = decode_clip(path, float(t), float(t) + PROBE_S, max_side=THUMB_SIDE)
            frames.append((float(dec.frame_times[0]), dec.frames[0]))
        hi = lo + audio_seconds if clip.end is None else min(clip.end, lo + audio_seconds)
        dec = decode_clip(path, lo, hi, max_side=THUMB_SIDE)
        tracks, a0 = dec.audio, dec.start
    chosen = _pick_track(tracks, clip.track)
    if chosen is None:
        langs = ", ".join(f"{t.index} ({t.language or 'no tag'})" for t in tracks) or "none"
        return frames, f"no audio track {clip.track!r} (tracks: {langs})"
    samples = chosen.samples[: int(round(audio_seconds * chosen.sample_rate))]
    if not len(samples):
        return frames, f"no audio samples from {a0:.2f} s"
    return frames, samples


def _strip(root: Path, key: str, frames) -> str:
    from matplotlib.image import imsave  # Pillow's JPEG writer; Pillow is a matplotlib dependency

    imgs = []
    for i, (t, rgb) in enumerate(frames):
        name = f"{ASSETS}/{key}-f{i}.jpg"
        imsave(root / name, np.ascontiguousarray(rgb), format="jpeg", pil_kwargs={"quality": 85})
        imgs.append(f'<img src="{_e(name)}" alt="frame at {t:.2f} s" title="{t:.2f} s">')
    return f'<div class="strip">{"".join(imgs)}</div>'


def _audio(root: Path, key: str, audio) -> str:
    if isinstance(audio, str):
        return _note(audio)
    name = f"{ASSETS}/{key}.wav"
    pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype("<i2")
    with wave.open(str(root / name), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(AUDIO_RATE)
        w.writeframes(pcm.tobytes())
    return f'<audio controls preload="metadata" src="{_e(name)}"></audio>'


# ----------------------------------------------------------------------------- page


def _e(x) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _note(text: str) -> str:
    return f'<p class="missing">{_e(text)}</p>'


def _num(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else _e(v)


def _window(d: dict) -> str:
    s, e = d.get("start"), d.get("end")
    if s is None and e is None:
        return "whole file"
    return f"{'start' if s is None else f'{s:.2f}'}–{'end' if e is None else f'{e:.2f}'} s"


def _common(records: list[dict], get) -> str:
    vals = list(dict.fromkeys(str(get(r)) for r in records if get(r) is not None))
    return ", ".join(vals) if vals else "—"


def _header(records: list[dict], summary: dict) -> str:
    enc = lambda m: lambda r: (r.get("encoders") or {}).get(m)  # noqa: E731
    rows = [("checkpoint", _common(records, lambda r: r.get("checkpoint"))),
            ("step", _common(records, lambda r: r.get("step"))),
            ("video encoder", _common(records, enc("video"))),
            ("audio encoder", _common(records, enc("audio"))),
            ("method", _common(records, lambda r: r.get("method"))),
            ("k", _common(records, lambda r: r.get("k"))),
            ("direction", _common(records, lambda r: r.get("direction"))),
            ("sequence distance", _common(records, lambda r: r.get("seq_distance"))),
            ("queries", str(len(records)))]
    if summary.get("split"):
        rows.append(("split", str(summary["split"])))
    dl = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows)
    badge = ""
    if any(r.get("stand_in_encoders") for r in records):
        badge = ('<p class="badge">stand-in encoders: features come from parameter-free stand-ins, '
                 'not CLIP/BEATs; these numbers are not real-model results</p>')
    title = summary.get("title") or "SCAV search report"
    return f"<header><h1>{_e(title)}</h1>{badge}<dl>{dl}</dl></header>"


def _summary(summary: dict, root: Path) -> str:
    parts = []
    rk = summary.get("R@K") or {}
    if rk:
        cols = list(dict.fromkeys(["R@1", "R@5", "R@10", "MedR", *[c for d in rk.values() for c in d]]))
        head = "".join(f"<th>{_e(c)}</th>" for c in cols)
        body = "".join(f"<tr><th>{_e(d)}</th>" + "".join(f"<td>{_num(m.get(c, '—'))}</td>" for c in cols) + "</tr>"
                       for d, m in rk.items())
        split = f" on split {_e(summary['split'])}" if summary.get("split") else ""
        parts.append(f'<table class="rk"><caption>Recall{split}</caption><tr><th>direction</th>{head}</tr>'
                     f"{body}</table>")
    if summary.get("k_curve"):
        name = f"{ASSETS}/k_curve.png"
        _plot_k_curve(summary["k_curve"], root / name, summary.get("split"))
        parts.append(f'<img class="curve" src="{_e(name)}" alt="recall and time against k">')
    return f'<section class="summary">{"".join(parts)}</section>' if parts else ""


def _plot_k_curve(curve: list[dict], path: Path, split) -> None:
    """Recall (left axis) and search time (right axis) against k, log x."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    pts = sorted(curve, key=lambda p: p["k"])
    ks = [p["k"] for p in pts]
    fig = Figure(figsize=(7, 3.6))
    ax = fig.add_subplot()
    for key, style in (("R@1", "o-"), ("R@5", "s-"), ("R@10", "^-")):
        if all(key in p for p in pts):
            ax.plot(ks, [p[key] for p in pts], style, label=key)
    ax.set_xscale("log")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    ax.set_xlabel("k (candidates re-ranked by seq)")
    ax.set_ylabel("recall")
    handles, labels = ax.get_legend_handles_labels()
    if all("seconds" in p for p in pts):
        ax2 = ax.twinx()
        ax2.plot(ks, [p["seconds"] for p in pts], "k:", marker="x", label="time (s)")
        ax2.set_ylabel("search time (s)")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    if handles:
        ax.legend(handles, labels, loc="best", fontsize=8)
    ax.set_title(f"recall and time against k{f' ({split})' if split else ''}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _clip_of(d: dict, track) -> _Clip:
    return _Clip(path=d.get("path") or d.get("media") or "", start=d.get("start"), end=d.get("end"),
                 track=0 if track is None else track, clip_id=d.get("clip_id"))


def _result_row(r: dict, media: _Media, track) -> str:
    partner = r.get("is_partner")
    mark = '<span class="partner-mark">✔ true partner</span>' if partner else ""
    clip = f'<div class="cid">{_e(r.get("clip_id"))} · {_e(_window(r))}</div>{media.fragment(_clip_of(r, track))}'
    return (f'<tr{" class=partner" if partner else ""}><td class="rank">{_e(r.get("rank"))}</td>'
            f'<td>{_num(r.get("score"))}</td><td>{clip}</td><td>{_e(r.get("label"))}</td>'
            f'<td>{_e(r.get("source"))}</td><td>{mark}</td></tr>')


def _query_section(i: int, rec: dict, media: _Media) -> str:
    q = rec.get("query") or {}
    track = q.get("track")
    facts = [("clip", q.get("clip_id") or q.get("media")), ("label", q.get("label")), ("source", q.get("source")),
             ("split", q.get("split")), ("window", _window(q)), ("query modality", q.get("modality")),
             ("audio track", track)]
    dl = "".join(f"<dt>{_e(a)}</dt><dd>{_e(b)}</dd>" for a, b in facts if b is not None)
    results = rec.get("results") or []
    table = _note("no results")
    if results:
        head = "".join(f"<th>{h}</th>" for h in ("rank", "score", "clip", "label", "source", ""))
        rows = "".join(_result_row(r, media, track) for r in results)
        table = f'<table class="results"><tr>{head}</tr>{rows}</table>'
    if q.get("clip_id") and results and not any(r.get("is_partner") for r in results):
        table = _note(f"the true partner is not among the top {len(results)}") + table
    k = f" (k={_e(rec['k'])})" if rec.get("k") is not None else ""
    title = f"Query {i + 1} · {_e(rec.get('direction'))} · {_e(rec.get('method'))}{k}"
    return (f'<section class="query"><h2>{title}</h2><div class="qbox"><dl>{dl}</dl>'
            f"<div>{media.fragment(_clip_of(q, track))}</div></div>{table}</section>")


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1250px}
header dl,.qbox dl{display:grid;grid-template-columns:max-content auto;gap:.1em 1em;margin:.5em 0}
header dl{grid-template-columns:repeat(2,max-content minmax(10em,auto))}
dt{font-weight:600}dd{margin:0;word-break:break-all}
.badge{display:inline-block;background:#c62828;color:#fff;padding:.3em .7em;border-radius:4px;font-weight:600}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .5em;vertical-align:top}
table.rk td{text-align:right}caption{text-align:left;font-weight:600}
.summary{display:flex;flex-wrap:wrap;gap:2em;align-items:flex-start}.curve{max-width:620px}
.query{border-top:2px solid #888;margin-top:1.5em}
.qbox{background:#f4f6fa;padding:.5em;display:flex;flex-wrap:wrap;gap:2em;align-items:center}
.strip{display:flex;gap:3px;margin:.2em 0}.strip img{height:64px;width:auto;image-rendering:pixelated}
audio{height:30px;width:260px}.cid{font-size:.85em;color:#555}
tr.partner{background:#e6f4ea;outline:3px solid #2e7d32}.partner-mark{color:#2e7d32;font-weight:700}
.missing{color:#b71c1c;font-style:italic;margin:.2em 0}.rank{font-weight:700;text-align:center}
"""


def _page(title: str, body: list[str]) -> str:
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>\n" + "\n".join(b for b in body if b)
            + "\n</body></html>\n")
