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
from typing import Annotated, Optional

import typer
from scav.core.cli import VERSION_OPTION, data_console, make_app, write_json
from scav.core.cli import text as _text

from .cli_options import (
    STAND_INS,
    BeatsCkpt,
    ClipWeights,
    ExtractOptions,
    JsonOut,
    Out,
    PartClips,
    Wait,
    check_weights,
    config_of,
    encoder_spec,
    extraction_command,
    spec_of,
)
from .config import EncoderSpec, ExtractConfig

app = make_app(
    no_args_is_help=True,
    help=(
        "Extract frozen-encoder features (video per frame, audio per BEATs step) into a SCAV "
        "feature cache (Zarr).\n\n"
        "\b\n"  # click: keep the example lines as written
        "  scav-extract synthetic --out features.zarr       (the generated demo benchmark)\n"
        "  scav-extract MANIFEST.csv --out features.zarr   (a CSV: clip_id,path,start,end,split,label,source)\n"
        "  scav-extract DIR --out features.zarr [--window 10 --hop 5]   (every media file under DIR)\n"
        "  scav-extract vggsound --gpus 1 --beats-ckpt FILE (data/vggsound/{vggsound.csv,media/})\n"
        "  scav-extract music --gpus 1 --beats-ckpt FILE    (data/music/{MUSIC21_solo_videos.json,media/})\n"
        "  scav-extract inspect features.zarr\n"
        "  scav-extract verify features.zarr [--repair]     (check every chunk; set damaged parts aside)\n\n"
        "Runs resume: clips already in the cache are skipped, so re-running a killed command finishes it. "
        "vggsound and music run the paper's encoders (CLIP ViT-B/32, BEATs; docs/WEIGHTS.md) unless --stand-in "
        "is given; the other commands use the parameter-free stand-ins (pixels, fbank) for an encoder whose "
        "weights are not given."
    ),
)

DATA_ENV = "SCAV_DATA"


def data_root() -> Path:
    """Where dataset defaults live: $SCAV_DATA, else ./data."""
    return Path(os.environ.get(DATA_ENV, "data"))


# -- running and printing ----------------------------------------------------------------------


def _extract(cfg: ExtractConfig, json_path: str | None) -> dict:
    from rich.console import Console

    from .runner import run

    err = Console(stderr=True)
    stand_ins = [n for n in (cfg.encoders.video, cfg.encoders.audio) if n in STAND_INS]
    if stand_ins:
        err.print(
            f"[yellow]Using stand-in encoder(s) {', '.join(stand_ins)}: parameter-free features for tests and "
            "demos, not CLIP/BEATs. Pass --clip-weights / --beats-ckpt for the real encoders.[/yellow]"
        )
    summary = run(cfg)
    if json_path != "-":
        print_run_summary(summary)
    write_json(json_path, summary)
    if summary.get("all_failed"):
        typer.echo(f"error: every clip failed ({summary['failed']}); nothing was extracted", err=True)
        raise typer.Exit(1)
    return summary


def print_run_summary(summary: dict) -> None:
    from rich.table import Table

    con = data_console()  # data strings (ids, paths, labels) are never read as markup
    t = Table(title="scav-extract", show_header=False)
    rows = [
        ("encoders", f"video={summary['encoders']['video']}  audio={summary['encoders']['audio']}"),
        ("clips requested", summary["requested"]),
        ("already in cache (skipped)", summary["already_present"]),
        ("extracted", summary["extracted"]),
    ]
    if summary.get("clipped_to_file_end"):
        rows.append(("window past the file end (stored to the end decoded)", summary["clipped_to_file_end"]))
    by = ", ".join(f"{k}: {v}" for k, v in summary["failed_by_stage"].items())
    rows.append(("failed", f"{summary['failed']}" + (f"  ({by})" if by else "")))
    rows.append(("time", f"{summary['seconds']:.1f} s, {summary['clips_per_s']:.2f} clips/s"))
    cache = summary["cache"]
    rows.append(("cache", f"{cache['path']}: {cache['clips']} clips, splits {cache['splits']}"))
    for key, value in rows:
        t.add_row(key, _text(value))
    con.print(t)
    if summary["failures"]:
        _print_failures(con, summary["failures"])


def _print_failures(con, failures: list[dict], limit: int = 50) -> None:
    from rich.table import Table

    t = Table(title=f"failures ({len(failures)})")
    for col in ("clip_id", "stage", "reason", "path"):
        t.add_column(col, overflow="fold")
    for f in failures[:limit]:
        t.add_row(*(_text(f[k]) for k in ("clip_id", "stage", "reason", "path")))
    if len(failures) > limit:
        t.add_row("...", "", f"{len(failures) - limit} more (scav-extract inspect --json -)", "")
    con.print(t)


def _extract_built(name: str, result, opts: ExtractOptions, spec: EncoderSpec, **kw) -> dict:
    """Write a builder's manifest + missing-media report next to the cache, then extract it."""
    folder = Path(str(opts.out) + ".manifests")
    manifest, report = result.write(folder, name)
    data_console(stderr=True).print(
        f"{name}: {len(result.rows)} clips with media, {len(result.missing)} missing/unreadable "
        f"(listed in {report}); manifest: {manifest}"
    )
    if not result.rows:
        raise typer.Exit(1)
    summary = _guard(lambda: _extract(config_of(opts, spec, manifest, media_root=result.media_root, **kw),
                                      opts.json_path))
    if opts.json_path != "-":
        typer.echo(f"missing media: {len(result.missing)} (see {report})")
    return summary


# -- commands ----------------------------------------------------------------------------------

Window = Annotated[Optional[float], typer.Option(
    metavar="SECONDS", help="Cut each whole file into clips of this many seconds (a shorter tail is dropped, "
                            "as MUSIC's 10 s windows); ids become ID@START.")]
Hop = Annotated[Optional[float], typer.Option(
    metavar="SECONDS", help="With --window: seconds between window starts (default: the window, no overlap).")]


@extraction_command(app, "manifest")
def manifest_cmd(
    manifest: Annotated[Path, typer.Argument(help="Manifest CSV (header clip_id,path,start,end,split,label,source).")],
    media_root: Annotated[
        Optional[Path], typer.Option(help="Folder that relative media paths are resolved against (default: the manifest's folder).")
    ] = None,
    split: Annotated[Optional[str], typer.Option(help="Extract only the manifest rows of this split.")] = None,
    as_split: Annotated[Optional[str], typer.Option(help="Store the extracted clips under this split name.")] = None,
    window: Window = None,
    hop: Hop = None,
    *,
    opts: ExtractOptions,
) -> None:
    """Extract the clips of a manifest CSV (also: `scav-extract MANIFEST.csv ...`). With --window, rows
    without start/end (whole files) are cut into windows; the windowed manifest is written next to the cache."""
    spec = _guard(lambda: spec_of(opts))
    if window is None:
        if hop is not None:
            _fail("--hop needs --window")
        cfg = config_of(opts, spec, manifest, media_root=media_root, split=split, as_split=as_split)
        _guard(lambda: _extract(cfg, opts.json_path))
        return
    from ..data_manifests.folder import window_rows
    from ..data_manifests.manifest import load_manifest

    base = media_root or manifest.parent
    result = _guard(lambda: window_rows(load_manifest(manifest), base, window, hop))
    _extract_built(f"{manifest.stem}_windows", result, opts, spec, split=split, as_split=as_split)


@extraction_command(app, "folder")
def folder_cmd(
    folder: Annotated[Path, typer.Argument(help="Folder of media files, searched recursively (also: `scav-extract DIR ...`).")],
    window: Window = None,
    hop: Hop = None,
    split: Annotated[str, typer.Option(help="Split name the clips are stored under.")] = "all",
    *,
    opts: ExtractOptions,
) -> None:
    """Extract every media file under a folder (.mp4, .mkv, .webm, .mov, .avi, ...; hidden entries skipped),
    whole or cut into --window clips; clip ids are the relative paths (PATH or PATH@START), labels the
    files' folders. The manifest built is written next to the cache (<out>.manifests/folder.csv)."""
    from ..data_manifests.folder import build_folder

    spec = _guard(lambda: spec_of(opts, command="folder"))
    result = _guard(lambda: build_folder(folder, window, hop, split))
    if not result.rows and not result.missing:
        _fail(f"no media files under {folder} (looked for .mp4, .mkv, .webm, .mov, .avi, ... ; see --help)")
    _extract_built("folder", result, opts, spec)


@extraction_command(app, "vggsound")
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
    *,
    opts: ExtractOptions,
) -> None:
    """Build the VGGSound manifest (splits vggsound-train / vggsound-test) and extract it with the paper's
    encoders (CLIP ViT-B/32 + BEATs: --beats-ckpt is required; or --stand-in)."""
    from ..data_manifests.vggsound import build_vggsound

    spec = _guard(lambda: spec_of(opts, paper="vggsound"))
    root = data_root() / "vggsound"
    if list_path is None:
        list_path = root / "vggsound.csv"
        if not list_path.is_file() and (root / "test.csv").is_file():
            list_path = root / "test.csv"
    media_root = media_root or root / "media"
    result = _guard(lambda: build_vggsound(list_path, media_root, _split_set(splits)))
    _extract_built("vggsound", result, opts, spec)


@extraction_command(app, "music")
def music_cmd(
    list_path: Annotated[
        Optional[Path],
        typer.Option("--list", help="MUSIC21_solo_videos.json. Default: $SCAV_DATA/music/MUSIC21_solo_videos.json."),
    ] = None,
    media_root: Annotated[
        Optional[Path], typer.Option(help="Folder of <ytid>.mp4 videos. Default: $SCAV_DATA/music/media.")
    ] = None,
    splits: Annotated[Optional[str], typer.Option(help="Comma-separated: train,test (default: all).")] = None,
    *,
    opts: ExtractOptions,
) -> None:
    """Build the MUSIC21-solo manifest (10 s windows; splits music-train / music-test, see
    data_manifests/README.md for the split rule) and extract it with the paper's encoders (CLIP ViT-B/32 +
    BEATs: --beats-ckpt is required; or --stand-in)."""
    from ..data_manifests.music import build_music

    spec = _guard(lambda: spec_of(opts, paper="music"))
    root = data_root() / "music"
    list_path = list_path or root / "MUSIC21_solo_videos.json"
    media_root = media_root or root / "media"
    result = _guard(lambda: build_music(list_path, media_root, _split_set(splits)))
    _extract_built("music", result, opts, spec)


@extraction_command(app, "synthetic")
def synthetic_cmd(
    media_dir: Annotated[
        Optional[Path], typer.Option(help="Where the generated media + manifest go (default: <out>.synthetic).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed of the benchmark.")] = 0,
    classes: Annotated[Optional[int], typer.Option(help="Number of classes (default: SyntheticConfig).")] = None,
    sources_per_class: Annotated[Optional[int], typer.Option(help="Long source videos per class.")] = None,
    clips_per_source: Annotated[Optional[int], typer.Option(help="Clips cut from each source.")] = None,
    clip_seconds: Annotated[Optional[float], typer.Option(help="Seconds per clip.")] = None,
    *,
    opts: ExtractOptions,
) -> None:
    """Generate the synthetic audio-visual benchmark (media + manifest) and extract it."""
    from dataclasses import replace

    from ..data_manifests.synthetic import SyntheticConfig, build_synthetic

    spec = _guard(lambda: spec_of(opts, command="synthetic"))
    overrides = {k: v for k, v in dict(classes=classes, sources_per_class=sources_per_class,
                                       clips_per_source=clips_per_source, clip_seconds=clip_seconds).items()
                 if v is not None}
    syn = replace(SyntheticConfig(), seed=seed, **overrides)
    media_dir = media_dir or Path(str(opts.out) + ".synthetic")
    manifest = _guard(lambda: build_synthetic(media_dir, syn))
    _guard(lambda: _extract(config_of(opts, spec, manifest), opts.json_path))


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
    t = Table(title=_text(cache), show_header=False)
    for key, value in summary.items():
        if key == "encoders":
            for mod, info in value.items():
                extra = f" sha256={info['checksum'][:12]}" if info.get("checksum") else ""
                t.add_row(f"{mod} encoder", _text(f"{info['name']}{' (stand-in)' if info.get('stand_in') else ''} "
                                                  f"dim={info['dim']}{extra}"))
        else:
            t.add_row(key, _text(json.dumps(value) if isinstance(value, dict) else value))
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
            # the cache's own encoders, BEATs window included, so the repaired clips match the rest
            spec = _guard(lambda: encoder_spec(meta.video.name, meta.audio.name, clip_weights, beats_ckpt,
                                               window_steps=meta.audio.preprocessing.get("window_steps")))
            _guard(lambda: check_weights(spec, "verify --repair"))
            cfg = config_of(ExtractOptions(out=cache, progress=False), spec, manifest, media_root=media_root)
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
    """Console entry point; ``scav-extract X.csv ...`` means ``scav-extract manifest X.csv ...`` and
    ``scav-extract DIR ...`` (a folder that is not a command's name) ``scav-extract folder DIR ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].lower().endswith(".csv"):
        argv.insert(0, "manifest")
    elif argv and not argv[0].startswith("-") and argv[0] not in _command_names() and Path(argv[0]).is_dir():
        argv.insert(0, "folder")
    logging.basicConfig(level=os.environ.get("SCAV_LOG", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    app(args=argv, prog_name="scav-extract")


def _command_names() -> set[str]:
    return {c.name or c.callback.__name__ for c in app.registered_commands}


if __name__ == "__main__":
    main()
