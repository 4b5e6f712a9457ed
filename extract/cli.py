"""`scav-extract`: turn videos into a SCAV feature cache (thin typer layer over ``runner.run``).

Heavy modules (torch, transformers, zarr) are imported inside the commands so
``--help`` stays fast.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer
from scav.core.cli import JSON_HELP, VERSION_OPTION, data_console, make_app, write_json

app = make_app(
    no_args_is_help=True,
    help=(
        "Extract frozen-encoder features (video per frame, audio per BEATs step) into a SCAV "
        "feature cache (Zarr).\n\n"
        "\b\n"  # click: keep the example lines as written
        "  scav-extract synthetic --out features.zarr       (the generated demo benchmark)\n"
        "  scav-extract MANIFEST.csv --out features.zarr   (a CSV: clip_id,path,start,end,split,label,source)\n"
        "  scav-extract vggsound --gpus 1                   (data/vggsound/{vggsound.csv,media/})\n"
        "  scav-extract music --gpus 1                      (data/music/{MUSIC21_solo_videos.json,media/})\n"
        "  scav-extract inspect features.zarr\n"
        "  scav-extract verify features.zarr [--repair]     (check every chunk; set damaged parts aside)\n\n"
        "Runs resume: clips already in the cache are skipped, so re-running a killed command finishes it. "
        "Without --clip-weights/--beats-ckpt the parameter-free stand-in encoders (pixels, fbank) are used."
    ),
)

DATA_ENV = "SCAV_DATA"


def data_root() -> Path:
    """Where dataset defaults live: $SCAV_DATA, else ./data."""
    return Path(os.environ.get(DATA_ENV, "data"))


# -- options shared by the extraction commands ----------------------------------
Out = Annotated[Path, typer.Option("--out", "-o", help="Feature cache to create or extend (Zarr folder).")]
VideoEnc = Annotated[
    Optional[str],
    typer.Option(help="pixels (stand-in) | clip-vit-b32. Default: clip-vit-b32 with --clip-weights, else pixels."),
]
AudioEnc = Annotated[
    Optional[str],
    typer.Option(help="fbank (stand-in) | beats-iter3-as2m. Default: beats-iter3-as2m with --beats-ckpt, else fbank."),
]
ClipWeights = Annotated[
    Optional[Path],
    typer.Option(envvar="SCAV_CLIP_DIR", metavar="DIR|REPO_ID",
                 help="CLIP ViT-B/32: a local folder (transformers format), or a Hugging Face repository id "
                      "(openai/clip-vit-base-patch32[@revision]) found in the local HF cache; never downloaded. "
                      "See docs/WEIGHTS.md."),
]
BeatsCkpt = Annotated[
    Optional[Path],
    typer.Option(envvar="SCAV_BEATS_CKPT", metavar="FILE",
                 help="BEATs iter3+ AS2M checkpoint (.pt), never downloaded: the paper's "
                      "BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt (classifier head discarded); "
                      "BEATs_iter3_plus_AS2M.pt is accepted too. See docs/WEIGHTS.md."),
]
Gpus = Annotated[int, typer.Option(help="GPUs to use, one worker process each; 0 = one CPU worker.")]
Scheduler = Annotated[
    Optional[str],
    typer.Option(help="Address of an existing dask.distributed scheduler: run shards as tasks on its workers "
                      "(the cache path must be shared storage)."),
]
PartClips = Annotated[Optional[int], typer.Option(help="Clips per committed part (default 256).")]
DecodeThreads = Annotated[int, typer.Option(help="Decoding threads per encoder when --decode-workers 0.")]
DecodeWorkers = Annotated[
    Optional[int],
    typer.Option(help="Decode processes feeding the encoders through shared memory (default: the cores minus one "
                      "per GPU; 0: decode in threads of each encoder process, the reference path)."),
]
FrameBatch = Annotated[int, typer.Option(help="Video frames per encoder call, gathered across clips.")]
ClipPreprocess = Annotated[
    Optional[Literal["pil", "tensor"]],
    typer.Option(help="CLIP image preprocessing: pil (transformers' PIL processor, per frame on the CPU; "
                 "the default) or tensor (the same steps as batched torch ops on the encoder's device: the fast GPU "
                 "path; pixels differ by <= 2 grey levels on < 1 %, so it is a different encoder identity)."),
]
Wait = Annotated[
    float,
    typer.Option("--wait", metavar="SECONDS",
                 help="If another run is writing the cache, wait up to this long for it instead of refusing."),
]
RetryFailed = Annotated[bool, typer.Option(help="Try again clips recorded as failures by an earlier run.")]
Progress = Annotated[bool, typer.Option(help="Show a progress bar.")]
JsonOut = Annotated[Optional[str], typer.Option("--json", metavar="PATH", help=JSON_HELP)]


def _encoder_spec(video: str | None, audio: str | None, clip_weights: Path | None, beats_ckpt: Path | None,
                  clip_preprocess: str | None = None):
    from .runner import EncoderSpec

    video = video or ("clip-vit-b32" if clip_weights else "pixels")
    audio = audio or ("beats-iter3-as2m" if beats_ckpt else "fbank")
    return EncoderSpec(
        video=video,
        audio=audio,
        video_weights=str(clip_weights) if clip_weights and video != "pixels" else None,
        audio_weights=str(beats_ckpt) if beats_ckpt and audio != "fbank" else None,
        video_preprocess=clip_preprocess,
    )


def _extract(cfg, json_path: str | None) -> dict:
    from rich.console import Console

    from .runner import run

    err = Console(stderr=True)
    stand_ins = [n for n in (cfg.encoders.video, cfg.encoders.audio) if n in ("pixels", "fbank")]
    if stand_ins:
        err.print(
            f"[yellow]Using stand-in encoder(s) {', '.join(stand_ins)}: parameter-free features for tests and "
            "demos, not CLIP/BEATs. Pass --clip-weights / --beats-ckpt for the real encoders.[/yellow]"
        )
    summary = run(cfg)
    if json_path != "-":
        print_run_summary(summary)
    write_json(json_path, summary)
    return summary


def print_run_summary(summary: dict) -> None:
    from rich.table import Table

    con = data_console()  # data strings (ids, paths, labels) are never read as markup
    t = Table(title="scav-extract", show_header=False)
    t.add_row("encoders", f"video={summary['encoders']['video']}  audio={summary['encoders']['audio']}")
    t.add_row("clips requested", str(summary["requested"]))
    t.add_row("already in cache (skipped)", str(summary["already_present"]))
    t.add_row("extracted", str(summary["extracted"]))
    by = ", ".join(f"{k}: {v}" for k, v in summary["failed_by_stage"].items())
    t.add_row("failed", f"{summary['failed']}" + (f"  ({by})" if by else ""))
    t.add_row("time", f"{summary['seconds']:.1f} s, {summary['clips_per_s']:.2f} clips/s")
    cache = summary["cache"]
    t.add_row("cache", f"{cache['path']}: {cache['clips']} clips, splits {cache['splits']}")
    con.print(t)
    if summary["failures"]:
        _print_failures(con, summary["failures"])


def _print_failures(con, failures: list[dict], limit: int = 50) -> None:
    from rich.table import Table

    t = Table(title=f"failures ({len(failures)})")
    for col in ("clip_id", "stage", "reason", "path"):
        t.add_column(col, overflow="fold")
    for f in failures[:limit]:
        t.add_row(f["clip_id"], f["stage"], f["reason"], f["path"])
    if len(failures) > limit:
        t.add_row("...", "", f"{len(failures) - limit} more (scav-extract inspect --json -)", "")
    con.print(t)


def _config(manifest, out, rows=None, **kw):
    from .runner import ExtractConfig, devices_for_gpus

    gpus = kw.pop("gpus")
    progress = kw.pop("progress")
    return ExtractConfig(
        manifest=manifest, out=out, rows=rows, devices=devices_for_gpus(gpus), progress=progress, **kw
    )


# -- commands -------------------------------------------------------------------


@app.command("manifest")
def manifest_cmd(
    manifest: Annotated[Path, typer.Argument(help="Manifest CSV (header clip_id,path,start,end,split,label,source).")],
    out: Out = Path("features.zarr"),
    media_root: Annotated[
        Optional[Path], typer.Option(help="Folder that relative media paths are resolved against (default: the manifest's folder).")
    ] = None,
    video_encoder: VideoEnc = None,
    audio_encoder: AudioEnc = None,
    clip_weights: ClipWeights = None,
    beats_ckpt: BeatsCkpt = None,
    gpus: Gpus = 0,
    scheduler: Scheduler = None,
    part_clips: PartClips = None,
    split: Annotated[Optional[str], typer.Option(help="Extract only the manifest rows of this split.")] = None,
    as_split: Annotated[Optional[str], typer.Option(help="Store the extracted clips under this split name.")] = None,
    retry_failed: RetryFailed = False,
    decode_threads: DecodeThreads = 2,
    decode_workers: DecodeWorkers = None,
    frame_batch: FrameBatch = 1024,
    clip_preprocess: ClipPreprocess = None,
    wait: Wait = 0.0,
    progress: Progress = True,
    json_path: JsonOut = None,
) -> None:
    """Extract the clips of a manifest CSV (also: `scav-extract MANIFEST.csv ...`)."""
    cfg = _config(
        manifest, out, media_root=media_root,
        encoders=_encoder_spec(video_encoder, audio_encoder, clip_weights, beats_ckpt, clip_preprocess),
        gpus=gpus, scheduler=scheduler, part_clips=part_clips, split=split, as_split=as_split,
        retry_failed=retry_failed, decode_threads=decode_threads, decode_workers=decode_workers, frame_batch=frame_batch,
        lock_timeout=wait, progress=progress,
    )
    _guard(lambda: _extract(cfg, json_path))


def _dataset_cmd(name: str, result, out: Path, **kw) -> None:
    """Write the builder's manifest + missing-media report next to the cache, then extract."""

    folder = Path(str(out) + ".manifests")
    manifest, report = result.write(folder, name)
    data_console(stderr=True).print(
        f"{name}: {len(result.rows)} clips with media, {len(result.missing)} missing/unreadable "
        f"(listed in {report}); manifest: {manifest}"
    )
    if not result.rows:
        raise typer.Exit(1)
    json_path = kw.pop("json_path")
    cfg = _config(manifest, out, media_root=result.media_root, **kw)
    summary = _guard(lambda: _extract(cfg, json_path))
    if json_path != "-":
        typer.echo(f"missing media: {len(result.missing)} (see {report})")
    return summary


@app.command("vggsound")
def vggsound_cmd(
    list_path: Annotated[
        Optional[Path],
        typer.Option("--list", help="VGGSound list: official vggsound.csv (ytid,start,label,split) or test.csv "
                                    "(<ytid>_<start>.mp4,label). Default: $SCAV_DATA/vggsound/vggsound.csv, "
                                    "else $SCAV_DATA/vggsound/test.csv ($SCAV_DATA defaults to ./data)."),
    ] = None,
    media_root: Annotated[
        Optional[Path], typer.Option(help="Folder of <ytid>_<start:06d>.mp4 cuts. Default: $SCAV_DATA/vggsound/media.")
    ] = None,
    splits: Annotated[Optional[str], typer.Option(help="Comma-separated: train,test (default: all listed).")] = None,
    out: Out = Path("features.zarr"),
    video_encoder: VideoEnc = None,
    audio_encoder: AudioEnc = None,
    clip_weights: ClipWeights = None,
    beats_ckpt: BeatsCkpt = None,
    gpus: Gpus = 0,
    scheduler: Scheduler = None,
    part_clips: PartClips = None,
    retry_failed: RetryFailed = False,
    decode_threads: DecodeThreads = 2,
    decode_workers: DecodeWorkers = None,
    frame_batch: FrameBatch = 1024,
    clip_preprocess: ClipPreprocess = None,
    wait: Wait = 0.0,
    progress: Progress = True,
    json_path: JsonOut = None,
) -> None:
    """Build the VGGSound manifest (splits vggsound-train / vggsound-test) and extract it."""
    from ..data_manifests.vggsound import build_vggsound

    root = data_root() / "vggsound"
    if list_path is None:
        list_path = root / "vggsound.csv"
        if not list_path.is_file() and (root / "test.csv").is_file():
            list_path = root / "test.csv"
    media_root = media_root or root / "media"
    result = _guard(lambda: build_vggsound(list_path, media_root, _split_set(splits)))
    _dataset_cmd(
        "vggsound", result, out, encoders=_encoder_spec(video_encoder, audio_encoder, clip_weights, beats_ckpt, clip_preprocess),
        gpus=gpus, scheduler=scheduler, part_clips=part_clips, retry_failed=retry_failed,
        decode_threads=decode_threads, decode_workers=decode_workers, frame_batch=frame_batch,
        lock_timeout=wait, progress=progress, json_path=json_path,
    )


@app.command("music")
def music_cmd(
    list_path: Annotated[
        Optional[Path],
        typer.Option("--list", help="MUSIC21_solo_videos.json. Default: $SCAV_DATA/music/MUSIC21_solo_videos.json."),
    ] = None,
    media_root: Annotated[
        Optional[Path], typer.Option(help="Folder of <ytid>.mp4 videos. Default: $SCAV_DATA/music/media.")
    ] = None,
    splits: Annotated[Optional[str], typer.Option(help="Comma-separated: train,test (default: all).")] = None,
    out: Out = Path("features.zarr"),
    video_encoder: VideoEnc = None,
    audio_encoder: AudioEnc = None,
    clip_weights: ClipWeights = None,
    beats_ckpt: BeatsCkpt = None,
    gpus: Gpus = 0,
    scheduler: Scheduler = None,
    part_clips: PartClips = None,
    retry_failed: RetryFailed = False,
    decode_threads: DecodeThreads = 2,
    decode_workers: DecodeWorkers = None,
    frame_batch: FrameBatch = 1024,
    clip_preprocess: ClipPreprocess = None,
    wait: Wait = 0.0,
    progress: Progress = True,
    json_path: JsonOut = None,
) -> None:
    """Build the MUSIC21-solo manifest (10 s windows; splits music-train / music-test, see
    data_manifests/README.md for the split rule) and extract it."""
    from ..data_manifests.music import build_music

    root = data_root() / "music"
    list_path = list_path or root / "MUSIC21_solo_videos.json"
    media_root = media_root or root / "media"
    result = _guard(lambda: build_music(list_path, media_root, _split_set(splits)))
    _dataset_cmd(
        "music", result, out, encoders=_encoder_spec(video_encoder, audio_encoder, clip_weights, beats_ckpt, clip_preprocess),
        gpus=gpus, scheduler=scheduler, part_clips=part_clips, retry_failed=retry_failed,
        decode_threads=decode_threads, decode_workers=decode_workers, frame_batch=frame_batch,
        lock_timeout=wait, progress=progress, json_path=json_path,
    )


@app.command("synthetic")
def synthetic_cmd(
    out: Out = Path("features.zarr"),
    media_dir: Annotated[
        Optional[Path], typer.Option(help="Where the generated media + manifest go (default: <out>.synthetic).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed of the benchmark.")] = 0,
    classes: Annotated[Optional[int], typer.Option(help="Number of classes (default: SyntheticConfig).")] = None,
    sources_per_class: Annotated[Optional[int], typer.Option(help="Long source videos per class.")] = None,
    clips_per_source: Annotated[Optional[int], typer.Option(help="Clips cut from each source.")] = None,
    clip_seconds: Annotated[Optional[float], typer.Option(help="Seconds per clip.")] = None,
    video_encoder: VideoEnc = None,
    audio_encoder: AudioEnc = None,
    clip_weights: ClipWeights = None,
    beats_ckpt: BeatsCkpt = None,
    gpus: Gpus = 0,
    part_clips: PartClips = None,
    decode_threads: DecodeThreads = 2,
    decode_workers: DecodeWorkers = None,
    frame_batch: FrameBatch = 1024,
    clip_preprocess: ClipPreprocess = None,
    wait: Wait = 0.0,
    progress: Progress = True,
    json_path: JsonOut = None,
) -> None:
    """Generate the synthetic audio-visual benchmark (media + manifest) and extract it."""
    from dataclasses import replace

    from ..data_manifests.synthetic import SyntheticConfig, build_synthetic

    overrides = {k: v for k, v in dict(classes=classes, sources_per_class=sources_per_class,
                                       clips_per_source=clips_per_source, clip_seconds=clip_seconds).items()
                 if v is not None}
    syn = replace(SyntheticConfig(), seed=seed, **overrides)
    media_dir = media_dir or Path(str(out) + ".synthetic")
    manifest = _guard(lambda: build_synthetic(media_dir, syn))
    cfg = _config(
        manifest, out, encoders=_encoder_spec(video_encoder, audio_encoder, clip_weights, beats_ckpt, clip_preprocess),
        gpus=gpus, part_clips=part_clips, decode_threads=decode_threads, decode_workers=decode_workers, frame_batch=frame_batch,
        lock_timeout=wait, progress=progress,
    )
    _guard(lambda: _extract(cfg, json_path))


@app.command("inspect")
def inspect_cmd(
    cache: Annotated[Path, typer.Argument(help="Feature cache (Zarr folder).")],
    verify: Annotated[bool, typer.Option("--verify", help="Also check every part (as `scav-extract verify`) "
                                                            "before calling the cache healthy.")] = False,
    json_path: JsonOut = None,
) -> None:
    """Show a cache's encoders, splits, sizes and failed clips (and, with --verify, its health)."""
    from rich.table import Table

    from ..core.cache import FeatureCache

    fc = _guard(lambda: FeatureCache.open(cache))
    summary = fc.summary()
    if verify:
        from ..core.verify import verify_cache

        report = _guard(lambda: verify_cache(cache))
        summary["health"] = "healthy" if report.healthy else (
            f"damaged: {len(report.damaged)} part(s), {report.to_dict()['damaged_clips']} clip(s); "
            f"see `scav-extract verify {cache}`")
    else:
        # "healthy" is said only after every chunk was checked
        summary["health"] = "not checked (`scav-extract verify CACHE` or `inspect --verify` checks every part)"
    failures = [f.to_dict() for f in fc.failures()]
    write_json(json_path, {**summary, "failure_rows": failures})
    if json_path == "-":
        return
    con = data_console()  # data strings (ids, paths, labels) are never read as markup
    t = Table(title=str(cache), show_header=False)
    for key, value in summary.items():
        if key == "encoders":
            for mod, info in value.items():
                extra = f" sha256={info['checksum'][:12]}" if info.get("checksum") else ""
                t.add_row(f"{mod} encoder", f"{info['name']}{' (stand-in)' if info.get('stand_in') else ''} "
                                            f"dim={info['dim']}{extra}")
        else:
            t.add_row(key, json.dumps(value) if isinstance(value, dict) else str(value))
    con.print(t)
    if failures:
        _print_failures(con, failures)


@app.command("verify")
def verify_cmd(
    cache: Annotated[Path, typer.Argument(help="Feature cache (Zarr folder).")],
    repair: Annotated[bool, typer.Option(help="Set damaged parts aside (to CACHE/.damaged/) so the rest stays "
                                              "usable; with --manifest, extract their clips again.")] = False,
    manifest: Annotated[Optional[Path], typer.Option(help="With --repair: the manifest the cache was extracted "
                                                          "from; its clips missing from the cache are extracted.")] = None,
    media_root: Annotated[Optional[Path], typer.Option(help="With --manifest: folder relative media paths are "
                                                            "resolved against (default: the manifest's folder).")] = None,
    clip_weights: ClipWeights = None,
    beats_ckpt: BeatsCkpt = None,
    json_path: JsonOut = None,
) -> None:
    """Check every part of a cache: chunk files present, sizes, crc32c checksums, offsets against the clip
    table, finite values. Exit 0 if healthy (or repaired), 1 if damaged parts remain."""
    from ..core.verify import set_aside, verify_cache

    if manifest is not None and not repair:
        _fail("--manifest is used only with --repair")
    report = _guard(lambda: verify_cache(cache))
    result = report.to_dict()
    damaged = not report.healthy
    if repair and damaged:
        result["set_aside"] = _guard(lambda: set_aside(cache, report))
        damaged = False
        if manifest is not None:
            from ..core.cache import FeatureCache

            meta = _guard(lambda: FeatureCache.open(cache).meta)
            cfg = _config(manifest, cache, media_root=media_root, gpus=0, progress=False,
                          encoders=_encoder_spec(meta.video.name, meta.audio.name, clip_weights, beats_ckpt))
            from .runner import run

            summary = _guard(lambda: run(cfg))
            result["re_extracted"] = summary["extracted"]
            result["re_extract_failures"] = summary["failures"]
    write_json(json_path, result)
    if json_path != "-":
        for d in report.damaged:
            clips = ", ".join(d.clip_ids[:10]) + (f" and {len(d.clip_ids) - 10} more" if len(d.clip_ids) > 10 else "")
            typer.echo(f"damaged part {d.name} ({len(d.clip_ids)} clips: {clips or 'clip table unreadable'}):")
            for p in d.problems[:5]:
                typer.echo(f"  {p}")
        if "set_aside" in result:
            typer.echo(f"set aside {len(result['set_aside'])} part(s) in {cache}/.damaged; the rest is usable"
                       + (f"; re-extracted {result['re_extracted']} clip(s)" if "re_extracted" in result else
                          "; rerun the extraction with the same manifest to extract their clips again"))
        left = len(report.damaged) - len(result.get("set_aside", []))
        typer.echo(f"{cache}: {report.parts} parts, {report.clips} clips: "
                   + ("healthy" if report.healthy else f"{len(report.damaged)} damaged part(s), "
                      + ("all set aside" if "set_aside" in result and left <= 0 else f"{left} left")))
    if damaged:
        raise typer.Exit(1)


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@app.command("export")
def export_cmd(
    cache: Annotated[Path, typer.Argument(help="Feature cache (Zarr folder).")],
    out_h5: Annotated[Path, typer.Argument(help="HDF5 file to write.")],
    split: Annotated[Optional[str], typer.Option(help="Export only this split.")] = None,
) -> None:
    """Export a cache (or one split) to one HDF5 file (layout: data_manifests/README.md / core/hdf5.py)."""
    from ..core.hdf5 import export_h5

    n = _guard(lambda: export_h5(cache, out_h5, split=split))
    typer.echo(f"wrote {n} clips to {out_h5}")


@app.command("import")
def import_cmd(
    in_h5: Annotated[Path, typer.Argument(help="HDF5 file in the SCAV exchange layout.")],
    out: Out = Path("features.zarr"),
    part_clips: PartClips = None,
    wait: Wait = 0.0,
) -> None:
    """Import features from an HDF5 file into a new or existing cache (clips already there are skipped)."""
    import contextlib

    from ..core.hdf5 import import_h5

    def locked_import():
        # the cache lock is re-entrant within a process: holding it first (waiting up to --wait)
        # makes import_h5's own refuse-at-once acquisition succeed; a cache not created yet has no
        # lock file to wait on
        from ..core.writer_lock import CacheLock

        with CacheLock(out, timeout=wait) if wait > 0 and out.is_dir() else contextlib.nullcontext():
            return import_h5(in_h5, out, part_clips=part_clips)

    res = _guard(locked_import)
    typer.echo(f"imported {res['imported']} clips into {out} ({res['skipped']} already present)")


@app.callback()
def _root(version: bool = VERSION_OPTION) -> None:
    """Extract frozen-encoder features into a SCAV feature cache (see the commands below)."""


def _split_set(text: str | None) -> set[str] | None:
    return None if not text else {s.strip() for s in text.split(",") if s.strip()}


def _guard(fn):
    """Run ``fn``; user errors (bad manifest, cache mismatch, bad file) exit 2 with one clear line."""
    from ..core.schema import CacheError
    from ..data_manifests.manifest import ManifestError

    try:
        return fn()
    except (CacheError, ManifestError, ValueError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


def main(argv: list[str] | None = None) -> None:
    """Console entry point; ``scav-extract X.csv ...`` means ``scav-extract manifest X.csv ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].lower().endswith(".csv"):
        argv.insert(0, "manifest")
    logging.basicConfig(level=os.environ.get("SCAV_LOG", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    app(args=argv, prog_name="scav-extract")


if __name__ == "__main__":
    main()
