"""`scav-dub`: write dub-like audio tracks into media files (thin typer layer over ``pipeline.run``).

Stage implementations are imported only when a run needs them, so ``--help`` stays fast.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from scav.core.cli import JSON_HELP, VERSION_OPTION, data_console, make_app, write_json

HELP = (
        "Make counterfactual pairs (dubs paper §6, Fig. 5): for every media file of a manifest, write a copy "
        "with one new audio track per --target language, dubbed from the original track, and a manifest of the "
        "new files that `scav-extract` reads with every track and its language.\n\n"
        "\b\n"
        "  scav-dub MANIFEST.csv --out dubbed --target spa --target fra\n"
        "  scav-extract dubbed/manifest.csv --out features.zarr\n\n"
        "\b\n"
        "Stages (option: choices; * = default, runs here without weights):\n"
        "  1 separate speech from the rest   --separator known* | spectral | demucs (--demucs-weights)\n"
        "                                    | torchscript (--separator-model)\n"
        "  2 segment speech with timestamps  --segmenter known* | vad (webrtcvad) | subtitles (--subtitles)\n"
        "    and transcribe it               --transcriber known | subtitles | whisper (--whisper-model)\n"
        "  3 translate the text              --translator dictionary* | seamless (--seamless-model)\n"
        "  4 synthesise it (espeak-ng) and stretch each segment to the original's duration\n"
        "                                    --stretcher librosa* | rubberband (rubberband-cli)\n"
        "  5 convert the voice               --voice pitch* | model (--voice-weights)\n"
        "  6 match loudness (BS.1770) and long-term spectrum to the original segment\n"
        "  7 remix with the background at the original track's loudness; mux: video and original audio\n"
        "    copied untouched, one AAC track per language, tagged and flagged 'dub'\n\n"
        "'known' stems and script exist only for SCAV's synthetic benchmark (`scav-extract synthetic`, "
        "SyntheticConfig(dub_languages=...)); for other media without weights: --separator spectral --segmenter vad "
        "--subtitles DIR (one SRT/WebVTT file per media, as dubbing studios work), or whisper. Whisper and "
        "SeamlessM4T take a save_pretrained folder or a hub id (downloaded with internet; from the local cache "
        "when HF_HUB_OFFLINE=1), Demucs a model name (torch hub's cache) or a .th file, TorchScript and voice "
        "models a local file. Debian packages: espeak-ng (synthesis, always), rubberband-cli (--stretcher "
        "rubberband).\n\n"
        "Outputs in --out: media/<relative path of the input>(.mp4), manifest.csv, dub_report.json (stage "
        "implementations, quality checks per file and language, timings), failures.csv, records/. Runs resume: "
        "finished files are skipped, other targets are added to the earlier output (both kept); files that failed are retried only with --retry-failed. --out must not hold or sit among the inputs; one run at a time writes it. A file that fails "
        "is a row of failures.csv and never stops the run.\n\n"
        "Exit status: 0 when the run completed (failures are rows, as in scav-extract), 1 with --strict when a "
        "file failed or a quality check did not pass, 2 for bad input (missing manifest, unknown language, a "
        "plug-in without its weights)."
)
# one command: typer shows the command's help as the program's, so both carry the text
app = make_app(no_args_is_help=True, help=HELP)

Weights = Optional[Path]


@app.command(help=HELP, no_args_is_help=True)
def dub(
    manifest: Annotated[Path, typer.Argument(metavar="MANIFEST", help="Manifest CSV (clip_id,path,start,end,split,label,source): every "
                                                  "media file it names is dubbed once.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (created). Nothing is written outside "
                                                          "it, except --keep-stages.")],
    target: Annotated[list[str], typer.Option("--target", "-t", metavar="LANG",
                                              help="Language of a new track, ISO 639-2 (spa, fra, deu, ...); "
                                                   "repeat for several.")],
    source_language: Annotated[Optional[str], typer.Option(
        metavar="LANG", help="Language spoken in the original track (default: the segments' language, else "
                             "the original track's tag).")] = None,
    media_root: Annotated[Optional[Path], typer.Option(
        help="Folder relative media paths are resolved against (default: the manifest's folder).")] = None,
    separator: Annotated[str, typer.Option(help="known (synthetic benchmark) | spectral | demucs "
                                                "(needs --demucs-weights) | torchscript (needs "
                                                "--separator-model).")] = "known",
    demucs_weights: Annotated[Optional[str], typer.Option(
        envvar="SCAV_DEMUCS_WEIGHTS", metavar="PATH|NAME",
        help="Demucs: a single-model .th file, or a model name Demucs knows (htdemucs: downloaded into torch "
             "hub's cache) (for --separator demucs).")] = None,
    separator_model: Annotated[Weights, typer.Option(
        envvar="SCAV_SEPARATOR_MODEL", metavar="PATH",
        help="TorchScript separator file: model(mix (1, n)) -> (2, n) speech/background (--separator "
             "torchscript).")] = None,
    segmenter: Annotated[str, typer.Option(help="known (synthetic benchmark; gives text too) | vad "
                                                "(webrtcvad; needs a transcriber) | subtitles (each cue a "
                                                "segment; needs --subtitles).")] = "known",
    transcriber: Annotated[Optional[str], typer.Option(
        help="known | subtitles | whisper (needs --whisper-model). Default with --segmenter vad: subtitles "
             "when --subtitles is given, else known; none with the other segmenters.")] = None,
    subtitles: Annotated[Optional[Path], typer.Option(
        metavar="DIR", help="Folder of subtitle files (SRT, WebVTT, ...), one per media file at its manifest "
                            "path with the suffix .srt/.vtt: the transcript with its timings.")] = None,
    whisper_model: Annotated[Optional[str], typer.Option(
        envvar="SCAV_WHISPER_MODEL", metavar="DIR|HUB_ID",
        help="Whisper: a save_pretrained folder or a hub id, e.g. openai/whisper-small (--transcriber "
             "whisper).")] = None,
    translator: Annotated[str, typer.Option(help="dictionary (word list, runs here) | seamless "
                                                 "(needs --seamless-model).")] = "dictionary",
    seamless_model: Annotated[Optional[str], typer.Option(
        envvar="SCAV_SEAMLESS_MODEL", metavar="DIR|HUB_ID",
        help="SeamlessM4T: a save_pretrained folder or a hub id, e.g. facebook/seamless-m4t-v2-large "
             "(--translator seamless).")] = None,
    stretcher: Annotated[str, typer.Option(help="librosa (phase vocoder) | rubberband (Rubber Band R3 through "
                                                "Debian's rubberband-cli; keeps speech loudness better).")] = "librosa",
    voice: Annotated[str, typer.Option(help="pitch (shift towards the original's pitch) | model "
                                            "(needs --voice-weights).")] = "pitch",
    voice_weights: Annotated[Weights, typer.Option(envvar="SCAV_VOICE_WEIGHTS", metavar="PATH",
                                                   help="Local voice-conversion weights (for --voice model).")] = None,
    keep_stages: Annotated[Optional[Path], typer.Option(
        metavar="DIR", help="Also write every stage's audio (wav) and the segments (times, texts, translations; "
                            "json) per file and language here.")] = None,
    sample_rate: Annotated[int, typer.Option(help="Hz at which the original is decoded, every stage runs and the "
                                                  "new tracks are written.")] = 16000,
    limit: Annotated[Optional[int], typer.Option(metavar="N", help="Only the first N media files of the "
                                                                   "manifest.")] = None,
    retry_failed: Annotated[bool, typer.Option(help="Try again files recorded as failures by an earlier "
                                                    "run.")] = False,
    strict: Annotated[bool, typer.Option(help="Exit 1 when a file failed or a quality check did not "
                                              "pass.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    json_path: Annotated[Optional[str], typer.Option("--json", metavar="PATH", help=JSON_HELP)] = None,
    version: bool = VERSION_OPTION,
) -> None:
    from .config import DubConfig, StageOptions

    cfg = _guard(lambda: DubConfig(
        manifest=manifest, out=out, targets=tuple(_tag(t) for t in target),
        source_language=_tag(source_language) if source_language else None, media_root=media_root,
        stages=StageOptions(separator=separator, segmenter=segmenter, transcriber=transcriber,
                            translator=translator, stretcher=stretcher, voice=voice, demucs_weights=demucs_weights,
                            separator_model=separator_model, whisper_model=whisper_model,
                            seamless_model=seamless_model, voice_weights=voice_weights, subtitles=subtitles),
        keep_stages=keep_stages, sample_rate=sample_rate, limit=limit, retry_failed=retry_failed,
        progress=progress))
    summary = _guard(lambda: _run(cfg))
    if json_path != "-":
        print_summary(summary)
    write_json(json_path, summary)
    if strict and (summary["failed"] or summary["quality_failed"]):
        raise typer.Exit(1)


def _tag(tag: str) -> str:
    """A typed language tag in the form mp4 stores ('es', 'FRE' -> 'spa', 'fra'); kept as typed when it is
    not a tag, so that the config's check names it."""
    from .languages import language_tag

    try:
        return language_tag(tag)
    except ValueError:
        return tag


def _run(cfg):
    from .pipeline import run

    if not cfg.manifest.is_file():  # before building any stage: the plainest message first
        raise FileNotFoundError(f"manifest {cfg.manifest} does not exist")
    return run(cfg)


_SHOW = {"duration": lambda v: f"{v:.0f} smp", "onsets": lambda v: f"{1000 * v:.0f} ms",
         "loudness": lambda v: f"{v:.2f} LU", "background": lambda v: f"r {v:.4f}"}


def _fmt(name: str, check: dict) -> str:
    """A check as a short cell: its value, and FAIL in red when it did not pass."""
    value = check["value"]
    if value is None:
        return "n/a"
    from rich.markup import escape

    shown = escape(value) if isinstance(value, str) else _SHOW.get(name, lambda v: f"{v:.3g}")(value)
    return shown + (" [red]FAIL[/red]" if check["passed"] is False else "")


def print_summary(summary: dict) -> None:
    from rich.table import Table
    from rich.text import Text

    con = data_console()  # data strings (ids, paths, labels) are never read as markup
    if summary["quality"]:
        first = summary["quality"][0]["checks"]
        t = Table(title="quality checks per file and language", caption="pass: " + ", ".join(
            f"{k} {'>=' if k == 'background' else '<='} {first[k]['threshold']:g} {first[k]['unit']}" for k in _SHOW))
        t.add_column("file", overflow="fold")
        t.add_column("lang")
        for col in (*_SHOW, "passed"):
            t.add_column(col, justify="right", no_wrap=True)
        for q in summary["quality"]:
            c = q["checks"]
            t.add_row(q["path"], q["language"], *(Text.from_markup(_fmt(k, c[k])) for k in _SHOW),
                      "yes" if q["passed"] else Text("no", style="red"))
        con.print(t)
    t = Table(title="scav-dub", show_header=False)
    t.add_row("stages", ", ".join(f"{k}={v}" for k, v in summary["stages"].items()))
    t.add_row("targets", ", ".join(summary["targets"]))
    t.add_row("media files", f"{summary['files']} ({summary['clips']} clips)")
    t.add_row("already done (skipped)", str(summary["already_done"]))
    t.add_row("dubbed now", str(summary["dubbed"]))
    by = ", ".join(f"{k}: {v}" for k, v in summary["failed_by_stage"].items())
    t.add_row("failed", f"{summary['failed']}" + (f"  ({by})" if by else ""))
    t.add_row("quality checks failed", f"{summary['quality_failed']} of {len(summary['quality'])} tracks")
    slow = sorted(summary["timings"].items(), key=lambda kv: -kv[1])[:4]
    t.add_row("time", f"{summary['seconds']:.1f} s (" + ", ".join(f"{k} {v:.1f} s" for k, v in slow) + ")")
    t.add_row("outputs", f"{summary['manifest']}, {summary['report']}")
    con.print(t)
    if summary["failures"]:
        f = Table(title=f"failures ({len(summary['failures'])})")
        for col in ("path", "language", "stage", "reason"):
            f.add_column(col, overflow="fold")
        for row in summary["failures"][:50]:
            f.add_row(row["path"], row["language"], row["stage"], row["reason"])
        con.print(f)


def _guard(fn):
    """Run ``fn``; user errors (bad manifest, language, options, missing weights) exit 2 with one line."""
    from ..data_manifests.manifest import ManifestError
    from .stages import MissingWeights

    try:
        return fn()
    except MissingWeights as e:
        typer.echo(f"error: {e.reason}", err=True)
        raise typer.Exit(2) from None
    except (ManifestError, ValueError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=os.environ.get("SCAV_LOG", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    app(args=argv, prog_name="scav-dub")


if __name__ == "__main__":
    main()
