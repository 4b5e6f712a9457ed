"""Subtitles as the transcript (the way dubbing studios work): a weight-free route for real media.

A dubbing studio starts from the programme's script or subtitle file, with its timings, not
from speech recognition. ``--subtitles DIR`` gives scav-dub one subtitle file per media file
(SRT, WebVTT, or any format pysubs2 reads: ASS/SSA, MicroDVD, ...), found by the media's
manifest path: ``DIR/<relative path with its suffix replaced by .srt/.vtt/...>`` or
``DIR/<relative path>.srt`` (absolute or ``..`` paths: ``DIR/<file name ...>``).

- as a **segmenter** (``--segmenter subtitles``): every cue is a segment, with its text and
  its own start and end;
- as a **transcriber** (``--segmenter vad --subtitles DIR``, the default transcriber then):
  the speech segments come from webrtcvad on the speech stem, and each cue's text goes to the
  segment it overlaps most (cues that overlap none are dropped; a segment no cue overlaps has
  no text and keeps the background only).

Cue text is taken as plain text (pysubs2's ``plaintext``: formatting tags removed, line breaks
as spaces). The language of the text is the source language (``--source-language`` or the
original track's tag): a subtitle file does not say it.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path, PurePosixPath

from .languages import tag_or_none
from .plugins import optional_import
from .stages import Audio, Segment, StageError

EXTENSIONS = (".srt", ".vtt", ".ass", ".ssa", ".sub")
INSTALL = "pip install pysubs2 (in scav's [dub] extra)"


def subtitle_candidates(folder: Path, row_path: str) -> list[Path]:
    """Where the subtitle file of the media at manifest path ``row_path`` may be, in order."""
    p = PurePosixPath(row_path.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts:
        p = PurePosixPath(p.name)
    base = Path(folder) / Path(*p.parts)
    return [base.with_suffix(ext) for ext in EXTENSIONS] + [base.with_name(base.name + ext) for ext in EXTENSIONS]


def read_cues(path: str | os.PathLike, language: str | None = None, stage: str = "segment") -> list[Segment]:
    """The cues of a subtitle file as segments (seconds, plain text), sorted by start; empty cues and
    comments dropped. StageError when the file cannot be read as subtitles."""
    pysubs2 = optional_import("pysubs2", "subtitle reader", INSTALL, stage=stage)
    try:
        subs = pysubs2.load(str(path), encoding="utf-8")
    except (OSError, UnicodeDecodeError, ValueError, pysubs2.exceptions.Pysubs2Error) as e:
        raise StageError(stage, f"cannot read subtitles {path}: {type(e).__name__}: {e}") from None
    out = []
    for ev in subs:
        if ev.is_comment:
            continue
        # a cue's text ends at its first blank line (SRT and WebVTT alike); pysubs2 keeps a WebVTT
        # NOTE block that follows in the text
        text = " ".join(ev.plaintext.split("\n\n")[0].split())
        if text and ev.end > ev.start:
            out.append(Segment(ev.start / 1000.0, ev.end / 1000.0, text, language))
    return sorted(out, key=lambda s: (s.start, s.end))


class Subtitles:
    """Segmenter and transcriber from a folder of subtitle files (module docstring)."""

    name = "subtitles"

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ValueError(f"--subtitles {self.folder} is not a folder")

    def for_media(self, info) -> _MediaSubtitles:
        """The subtitles of one media file (``info``: dub.config.MediaInfo)."""
        tried = subtitle_candidates(self.folder, info.rows[0].path)
        found = next((p for p in tried if p.is_file()), None)
        if found is None:
            raise StageError("transcribe", f"no subtitle file for {info.rows[0].path} in {self.folder} (looked for "
                                           f"{', '.join(p.name for p in tried[:2])}, ...)")
        return _MediaSubtitles(found)


class _MediaSubtitles:
    name = "subtitles"

    def __init__(self, path: Path):
        self.path = path

    def segment(self, speech: Audio, language: str | None) -> list[Segment]:
        return read_cues(self.path, tag_or_none(language), "segment")

    def transcribe(self, speech: Audio, segments: list[Segment], language: str | None) -> list[Segment]:
        texts: list[list[str]] = [[] for _ in segments]
        for cue in read_cues(self.path, tag_or_none(language), "transcribe"):
            overlaps = [min(cue.end, s.end) - max(cue.start, s.start) for s in segments]
            k = max(range(len(segments)), key=overlaps.__getitem__, default=None)
            if k is not None and overlaps[k] > 0:
                texts[k].append(cue.text)
        lang = tag_or_none(language)
        return [replace(s, text=" ".join(t), language=lang or s.language) for s, t in zip(segments, texts)]
