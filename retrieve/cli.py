"""`scav-retrieve`: audio-visual retrieval with a trained checkpoint over a feature cache.

Without a command (``scav-retrieve --split S --checkpoint C``): the evaluation. Encodes the
split with a trained checkpoint and ranks, in both directions (A->V: audio queries, video
candidates; V->A the reverse), every clip's partner among all clips of the split, with the
aggregation (agg), sequence (seq) or hybrid method (paper §III-D). Prints R@1/R@5/R@10 (%),
MedR and MeanR; ``--json`` writes them.

Commands: ``search`` (clips, a split or media files against a gallery; JSON lines),
``index`` (save a gallery's latents for repeated searches), ``report`` (an HTML page of a
split's sampled searches, its R@K and hybrid's recall/time against k).

Thin layer: builds a config (:class:`~scav.retrieve.config.RetrieveConfig`,
:class:`~scav.retrieve.search_command.SearchRequest`, ...; choices and defaults are read
from them) and calls its run function, imported only when the command runs, so ``--help``
does not import torch.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Literal, Optional

import typer
from scav.core.cli import VERSION_OPTION, data_console, errors_exit_2, json_option, make_app, text, track_selector
from scav.core.device import DEVICE_HELP

from . import search_config as S
from .config import (
    DEFAULT_K,
    METHOD_CHOICES,
    PRECISIONS,
    SEARCH_METHODS,
    RetrieveConfig,
    defaults,
)

app = make_app(help="\n\n".join(__doc__.split("\n\n")[:3]))

D = defaults()
SD = S.SearchRequest(checkpoint="")  # search's defaults
ID = S.IndexRequest(checkpoint="")
RD = S.ReportRequest(checkpoint="", split="", out="")
Method = Literal[METHOD_CHOICES]
SearchMethod = Literal[SEARCH_METHODS]
Precision = Literal[PRECISIONS]
Direction = Literal[S.DIRECTIONS]
Ann = Literal[S.ANN_CHOICES]
TRACK_HELP = ("Audio track to use: an index (0 = the first/original) or a language tag as stored, e.g. spa; "
              "clips without it are left out (with a warning).")
GAMMA_HELP = ("Soft-DTW models: the gamma of seq/hybrid re-ranking; 0 = hard DTW (exact minimum alignment) "
              "[default: the trained gamma].")


def _block_size(value: str) -> int | str:
    """'auto' or an integer >= 1 (typer callback)."""
    if value == "auto":
        return value
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise typer.BadParameter(f"must be 'auto' or an integer >= 1, got {value!r}")
    return n


def render_table(result: dict):
    """A rich Table of the result dict: one row per (method, direction)."""
    from rich.table import Table

    enc = result["encoders"]
    title = (
        f"{result['split']}: {result['num_queries']} queries x {result['num_candidates']} candidates | "
        f"video={enc['video']}, audio={enc['audio']} | step {result['step']} | "
        f"seq distance: {result['seq_distance']}"
    )
    n = result["num_candidates"]
    over = [k for k in (5, 10) if k > n]
    caption = (f"R@{'/R@'.join(map(str, over))}: K exceeds the {n} candidates, so every partner is within K "
               f"(100 % by construction)") if over else None
    table = Table(title=text(title), caption=text(caption) if caption else None)
    for col in ("method", "direction", "R@1 %", "R@5 %", "R@10 %", "MedR", "MeanR", "seconds (both)"):
        table.add_column(col, justify="left" if col in ("method", "direction") else "right")
    for m, res in result["results"].items():
        label = f"hybrid k={result['k']}" if m == "hybrid" else m
        for d, name in (("a2v", "A->V"), ("v2a", "V->A")):
            r = res[d]
            table.add_row(
                label, name, f"{r['R@1']:.1f}", f"{r['R@5']:.1f}", f"{r['R@10']:.1f}",
                f"{r['MedR']:.0f}", f"{r['MeanR']:.1f}", f"{res['seconds']:.2f}" if d == "a2v" else "",
            )
    return table


@app.callback(invoke_without_command=True)
def main_command(
    ctx: typer.Context,
    split: Optional[str] = typer.Option(None, "--split", help="Split of the cache to search within (e.g. music-test). Required without a command."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Trained checkpoint, e.g. runs/x/averaged.pt. Required without a command."),
    cache: Path = typer.Option(Path(D["cache"]), "--cache", help="Feature cache (scav-extract output)."),
    method: Method = typer.Option(D["method"], "--method", help="agg (cosine of means), seq (trained sequence distance), hybrid (agg top-k re-ranked by seq) or all."),
    k: Optional[int] = typer.Option(D["k"], "--k", show_default=False, help=f"hybrid: candidates pre-selected by agg per query [default: {DEFAULT_K}, or the split size if smaller]."),
    audio_track: str = typer.Option(str(D["audio_track"]), "--audio-track", callback=track_selector, help=TRACK_HELP),
    dtw_gamma: Optional[float] = typer.Option(D["dtw_gamma"], "--dtw-gamma", show_default=False, help=GAMMA_HELP),
    json_path: Optional[str] = json_option("Also write the results as JSON to this file ('-' = standard output, then no table)."),
    batch_size: int = typer.Option(D["batch_size"], "--batch-size", help="Clips per encoder batch."),
    device: str = typer.Option(D["device"], "--device", help=DEVICE_HELP + "."),
    export: bool = typer.Option(D["export"], "--export", help="Keep latents next to the cache (<cache>.retrieval/<split>-<ckpt hash>/, .npy, memory-mapped) and reuse them later."),
    export_dir: Optional[Path] = typer.Option(D["export_dir"], "--export-dir", help="Folder for --export instead of <cache>.retrieval."),
    query_block: str = typer.Option(str(D["query_block"]), "--query-block", callback=_block_size, help="Queries scored together (memory, not results): a number, or auto = sized from the device's free memory."),
    candidate_chunk: str = typer.Option(str(D["candidate_chunk"]), "--candidate-chunk", callback=_block_size, help="Candidates scored together (memory, not results): a number, or auto."),
    precision: Precision = typer.Option(D["precision"], "--precision", help="seq's cross term: fp32 (exact) or bf16 (interpolated Euclidean models; faster on a GPU, R@1 within 0.1 point on our tests)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details."),
    version: bool = VERSION_OPTION,
) -> None:
    """Without a command: rank each clip's partner among all clips of one split, in both directions.

    A->V: each clip's audio queries all videos of the split; V->A the reverse.
    agg = cosine of mean-pooled latents; seq = the sequence distance the model was
    trained with (CAV models: interpolated Euclidean, video resampled); hybrid = agg
    top-k re-ranked by seq (a partner outside the top-k keeps its agg rank).
    Rank = 1 + candidates scoring strictly better + tied candidates with a smaller
    index. MedR = floor(median of 0-based ranks) + 1 (cav-mae convention).
    """
    if ctx.invoked_subcommand is not None:
        if split is not None or checkpoint is not None:
            ctx.fail(f"--split / --checkpoint before '{ctx.invoked_subcommand}' belong to the evaluation; "
                     f"give the command's own options after it (scav-retrieve {ctx.invoked_subcommand} --help)")
        return
    for name, value in (("--split", split), ("--checkpoint", checkpoint)):
        if value is None:
            ctx.fail(f"Missing option '{name}' (the evaluation needs --split and --checkpoint; "
                     "or give a command: search, index, report)")
    _logging(verbose)
    cfg = RetrieveConfig(
        checkpoint=str(checkpoint), split=split, cache=str(cache), method=method, k=k, dtw_gamma=dtw_gamma,
        audio_track=audio_track,
        json_path=str(json_path) if json_path else None, batch_size=batch_size, device=device,
        export=export, export_dir=str(export_dir) if export_dir else None,
        query_block=query_block, candidate_chunk=candidate_chunk, precision=precision,
    )
    from .evaluate import run

    console = data_console()
    with _errors_exit_2():
        with data_console(stderr=True).status("encoding the split and searching..."):
            result = run(cfg)
    if cfg.json_path == "-":
        return
    console.print(render_table(result))
    if cfg.json_path:
        console.print(f"wrote {cfg.json_path}")


# ----------------------------------------------------------------------------- search / index / report


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _errors_exit_2():
    """Bad input (cache, checkpoint, index, queries, values, files) -> one line, exit 2."""
    return errors_exit_2()


def _status():
    """A spinner on stderr (stdout may carry JSON lines) and a callable that updates its text."""
    from rich.console import Console

    spinner = Console(stderr=True, markup=False, highlight=False).status("starting...")
    return spinner, lambda text: spinner.update(text + "...")


def _window(row: dict) -> str:
    s, e = row.get("start"), row.get("end")
    if s is None and e is None:
        return "whole"
    return f"{'0' if s is None else f'{s:.2f}'}-{'end' if e is None else f'{e:.2f}'} s"


def render_query_table(record: dict):
    """A rich Table of one search record: the query in the title, one row per result."""
    from rich.table import Table

    q = record["query"]
    who = q["clip_id"] or q["media"]
    extra = ", ".join(x for x in (q.get("label") or "", q.get("split") or "") if x)
    k = f" k={record['k']}" if record["k"] is not None else ""
    title = (f"{who}{f' ({extra})' if extra else ''}: {q['modality']} query, {record['direction']}, "
             f"{record['method']}{k}")
    table = Table(title=text(title), title_justify="left")
    for col in ("rank", "clip_id", "score", "label", "split", "source", "window", "partner"):
        table.add_column(col, justify="right" if col in ("rank", "score") else "left")
    for r in record["results"]:
        table.add_row(str(r["rank"]), text(r["clip_id"]), f"{r['score']:.4f}", text(r["label"]), text(r["split"]),
                      text(r["source"]), _window(r), "yes" if r["is_partner"] else "")
    return table


@app.command("search")
def search_command(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Trained checkpoint, e.g. runs/x/averaged.pt."),
    cache: Optional[Path] = typer.Option(None, "--cache", show_default=False, help=f"Feature cache (scav-extract output) [default: the --index's cache, else {S.DEFAULT_CACHE}]."),
    query_clip: Optional[list[str]] = typer.Option(None, "--query-clip", metavar="ID", help="A clip id of the cache to query with (repeatable)."),
    query_ids: Optional[Path] = typer.Option(None, "--query-ids", metavar="FILE", help="A file of clip ids, one per line ('#' comments)."),
    query_split: Optional[str] = typer.Option(None, "--query-split", help="Query with every clip of this split."),
    query_media: Optional[list[Path]] = typer.Option(None, "--query-media", metavar="PATH", help="A media file, decoded and encoded now with the cache's encoders (repeatable)."),
    gallery_split: Optional[list[str]] = typer.Option(None, "--gallery-split", metavar="SPLIT", help="Search among the clips of this split (repeatable) [default: the whole cache]."),
    index: Optional[Path] = typer.Option(None, "--index", metavar="DIR", help="A saved gallery (scav-retrieve index): only the queries are encoded."),
    direction: Direction = typer.Option(SD.direction, "--direction", help="a2v: audio queries, video results; v2a: the reverse."),
    method: SearchMethod = typer.Option(SD.method, "--method", help="agg (cosine of means), seq (trained sequence distance over the whole gallery), hybrid (agg top-k re-ranked by seq)."),
    k: Optional[int] = typer.Option(None, "--k", show_default=False, help=f"hybrid: first-stage candidates re-ranked per query [default: {DEFAULT_K}, or the gallery size if smaller]."),
    topk: int = typer.Option(SD.topk, "--topk", help="Results per query (at most the gallery size; hybrid: at most k)."),
    audio_track: str = typer.Option("0", "--audio-track", callback=track_selector, help=TRACK_HELP),
    ann: Ann = typer.Option(SD.ann, "--ann", help="First stage: exact (torch below --faiss-threshold gallery clips, FAISS flat above), or approximate FAISS ivf / hnsw (a saved index's if it has one, else built now)."),
    nlist: Optional[int] = typer.Option(None, "--nlist", show_default=False, help="ivf: lists [default: the saved index's, else 4 sqrt(gallery)]."),
    nprobe: int = typer.Option(SD.nprobe, "--nprobe", help="ivf: lists searched per query (recall against speed)."),
    hnsw_m: int = typer.Option(SD.hnsw_m, "--hnsw-m", help="hnsw: neighbours per node (when built now)."),
    ef_search: int = typer.Option(SD.ef_search, "--ef-search", help="hnsw: search breadth (at least --k)."),
    faiss_threshold: int = typer.Option(SD.faiss_threshold, "--faiss-threshold", help="Exact first stage: galleries of at least this many clips go through FAISS (GPU FAISS on CUDA when installed), smaller ones through torch."),
    clip_weights: Optional[Path] = typer.Option(None, "--clip-weights", envvar="SCAV_CLIP_DIR", metavar="DIR|REPO_ID", help="--query-media on a CLIP cache: the CLIP weights scav-extract used (checked against the cache's sha256)."),
    beats_ckpt: Optional[Path] = typer.Option(None, "--beats-ckpt", envvar="SCAV_BEATS_CKPT", metavar="FILE", help="--query-media on a BEATs cache: the BEATs checkpoint scav-extract used (checked against the cache's sha256)."),
    dtw_gamma: Optional[float] = typer.Option(None, "--dtw-gamma", show_default=False, help=GAMMA_HELP),
    json_path: Optional[str] = json_option("Write one JSON object per query (JSON lines) to this file ('-' = standard output, then no tables)."),
    batch_size: int = typer.Option(SD.batch_size, "--batch-size", help="Clips per encoder batch."),
    device: str = typer.Option(SD.device, "--device", help=DEVICE_HELP + "."),
    query_block: str = typer.Option("auto", "--query-block", callback=_block_size, help="seq / hybrid: queries scored together (memory, not results)."),
    candidate_chunk: str = typer.Option("auto", "--candidate-chunk", callback=_block_size, help="seq / hybrid: candidates scored together (memory, not results)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details."),
) -> None:
    """Search a gallery with clips of the cache, a whole split, or media files.

    Prints a table per query (or writes JSON lines with --json): rank, clip, score
    (agg: cosine; seq and hybrid: minus the sequence distance; higher = closer) and
    whether the result is the query clip's own partner.

    \b
      scav-retrieve search --checkpoint C --query-clip ID --gallery-split test
      scav-retrieve search --checkpoint C --query-media clip.mp4 --index DIR --json hits.jsonl
    """
    _logging(verbose)
    req = S.SearchRequest(
        checkpoint=str(checkpoint), cache=str(cache) if cache else None, query_clips=tuple(query_clip or ()),
        query_ids_file=str(query_ids) if query_ids else None, query_split=query_split,
        query_media=tuple(str(p) for p in query_media or ()), gallery_splits=tuple(gallery_split or ()),
        index=str(index) if index else None, direction=direction, method=method, k=k, topk=topk,
        audio_track=audio_track, dtw_gamma=dtw_gamma, ann=ann, nlist=nlist, nprobe=nprobe, hnsw_m=hnsw_m,
        ef_search=ef_search, faiss_threshold=faiss_threshold, clip_weights=str(clip_weights) if clip_weights else None,
        beats_ckpt=str(beats_ckpt) if beats_ckpt else None, json_path=json_path, batch_size=batch_size,
        device=device, query_block=query_block, candidate_chunk=candidate_chunk,
    )
    from .search_command import run_search

    with _errors_exit_2():
        spinner, say = _status()
        with spinner:
            result = run_search(req, status=say)
    if json_path == "-":
        return
    console = data_console()
    for record in result.records:
        console.print(render_query_table(record))
    first = f", first stage {result.first_stage}" if result.first_stage else ""
    console.print(f"{len(result.records)} queries against {result.gallery_size} gallery clips{first}"
                  + (f" (index {result.index})" if result.index else ""))
    if json_path:
        console.print(f"wrote {json_path}")


@app.command("index")
def index_command(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Trained checkpoint, e.g. runs/x/averaged.pt."),
    cache: Path = typer.Option(Path(S.DEFAULT_CACHE), "--cache", help="Feature cache (scav-extract output)."),
    gallery_split: Optional[list[str]] = typer.Option(None, "--gallery-split", metavar="SPLIT", help="Index the clips of this split (repeatable) [default: the whole cache]."),
    out: Optional[Path] = typer.Option(None, "--out", show_default=False, help="Index folder [default: <cache>.retrieval/index-<ckpt hash>-<cache fingerprint>[-<splits>]]. An existing folder that is not an index is never replaced."),
    audio_track: str = typer.Option("0", "--audio-track", callback=track_selector, help=TRACK_HELP),
    ann: Ann = typer.Option(ID.ann, "--ann", help="Also save an approximate first-stage index per modality: ivf or hnsw (exact = none)."),
    nlist: Optional[int] = typer.Option(None, "--nlist", show_default=False, help="ivf: lists [default: 4 sqrt(gallery)]."),
    hnsw_m: int = typer.Option(ID.hnsw_m, "--hnsw-m", help="hnsw: neighbours per node."),
    ef_construction: int = typer.Option(ID.ef_construction, "--ef-construction", help="hnsw: build breadth."),
    rebuild: bool = typer.Option(False, "--rebuild", help="Rebuild even if an up-to-date index is there."),
    json_path: Optional[str] = json_option(),
    batch_size: int = typer.Option(ID.batch_size, "--batch-size", help="Clips per encoder batch."),
    device: str = typer.Option(ID.device, "--device", help=DEVICE_HELP + "."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details."),
) -> None:
    """Encode a gallery once and save it for `search --index` (latents memory-mapped)."""
    _logging(verbose)
    req = S.IndexRequest(
        checkpoint=str(checkpoint), cache=str(cache), gallery_splits=tuple(gallery_split or ()),
        out=str(out) if out else None, audio_track=audio_track, ann=ann, nlist=nlist, hnsw_m=hnsw_m,
        ef_construction=ef_construction, rebuild=rebuild, batch_size=batch_size, device=device, json_path=json_path,
    )
    from .search_command import run_index

    with _errors_exit_2():
        spinner, say = _status()
        with spinner:
            result = run_index(req, status=say)
    if json_path != "-":
        verb = "up to date" if result["reused"] else f"built in {result['seconds']:.1f} s"
        typer.echo(f"index {result['index']}: {result['clips']} clips, {verb}")


@app.command("report")
def report_command(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Trained checkpoint, e.g. runs/x/averaged.pt."),
    split: str = typer.Option(..., "--split", help="Split whose clips are queried and searched (the gallery)."),
    out: Path = typer.Option(..., "--out", help="Report folder (index.html + assets/), replaced as a whole."),
    cache: Path = typer.Option(Path(S.DEFAULT_CACHE), "--cache", help="Feature cache (scav-extract output)."),
    max_queries: int = typer.Option(RD.max_queries, "--max-queries", help="Queries sampled from the split."),
    seed: int = typer.Option(RD.seed, "--seed", help="Seed of the query sample."),
    direction: Direction = typer.Option(RD.direction, "--direction", help="a2v: audio queries, video results; v2a: the reverse."),
    method: SearchMethod = typer.Option(RD.method, "--method", help="agg, seq or hybrid, for the sampled searches and R@K."),
    k: Optional[int] = typer.Option(None, "--k", show_default=False, help=f"hybrid: first-stage candidates [default: {DEFAULT_K}, or the split size if smaller]."),
    topk: int = typer.Option(RD.topk, "--topk", help="Results shown per query."),
    ks: str = typer.Option(",".join(map(str, RD.ks)), "--ks", help="hybrid's k curve (recall and time), capped at the split size."),
    media_root: Optional[Path] = typer.Option(None, "--media-root", help="Folder the cache's media paths are relative to (the manifest's folder) [default: the working directory]."),
    audio_track: str = typer.Option("0", "--audio-track", callback=track_selector, help=TRACK_HELP),
    dtw_gamma: Optional[float] = typer.Option(None, "--dtw-gamma", show_default=False, help=GAMMA_HELP),
    json_path: Optional[str] = json_option("Also write the sampled searches as JSON lines to this file ('-' = standard output)."),
    batch_size: int = typer.Option(RD.batch_size, "--batch-size", help="Clips per encoder batch."),
    device: str = typer.Option(RD.device, "--device", help=DEVICE_HELP + "."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details."),
) -> None:
    """An HTML page: sampled searches within a split (frames and audio of each result), the
    split's R@K and hybrid's recall and time against k."""
    _logging(verbose)
    try:
        k_values = tuple(int(x) for x in ks.split(",") if x.strip())
    except ValueError:
        raise typer.BadParameter(f"--ks must be comma-separated integers, got {ks!r}") from None
    req = S.ReportRequest(
        checkpoint=str(checkpoint), split=split, out=str(out), cache=str(cache), max_queries=max_queries, seed=seed,
        direction=direction, method=method, k=k, topk=topk, ks=k_values, audio_track=audio_track,
        media_root=str(media_root) if media_root else None, dtw_gamma=dtw_gamma, batch_size=batch_size,
        device=device, json_path=json_path,
    )
    from .report_command import run_report

    with _errors_exit_2():
        spinner, say = _status()
        with spinner:
            result = run_report(req, status=say)
    if json_path != "-":
        media = result.get("media") or {}
        typer.echo(f"wrote {result['report']}")
        if media.get("no_media"):
            typer.echo(f"{media['no_media']} of {media['clips']} clips shown have no media in the report (missing, "
                       f"outside --media-root, or undecodable; the page says which)")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
