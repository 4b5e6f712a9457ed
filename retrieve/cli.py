"""`scav-retrieve`: audio-visual retrieval within one split of a feature cache.

Encodes the split with a trained checkpoint and ranks, in both directions (A->V:
audio queries, video candidates; V->A the reverse), every clip's partner among all
clips of the split, with the aggregation (agg), sequence (seq) or hybrid method
(paper §III-D). Prints R@1/R@5/R@10 (%), MedR and MeanR; ``--json`` writes them.

Thin layer: builds a :class:`~scav.retrieve.config.RetrieveConfig` (choices and defaults
are read from it) and calls :func:`scav.retrieve.evaluate.run`, imported only when the
command runs, so ``--help`` does not import torch.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Literal, Optional

import typer

from scav.cli_common import VERSION_OPTION, json_option, make_app, track_selector
from scav.core.device import DEVICE_HELP

from .config import DEFAULT_K, METHOD_CHOICES, PRECISIONS, RetrieveConfig, defaults

app = make_app(help=__doc__.split("\n\n")[0])

D = defaults()
Method = Literal[METHOD_CHOICES]
Precision = Literal[PRECISIONS]


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
    table = Table(title=title)
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


@app.command()
def main_command(
    split: str = typer.Option(..., "--split", help="Split of the cache to search within (e.g. music-test)."),
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Trained checkpoint, e.g. runs/x/averaged.pt."),
    cache: Path = typer.Option(Path(D["cache"]), "--cache", help="Feature cache (scav-extract output)."),
    method: Method = typer.Option(D["method"], "--method", help="agg (cosine of means), seq (trained sequence distance), hybrid (agg top-k re-ranked by seq) or all."),
    k: Optional[int] = typer.Option(D["k"], "--k", show_default=False, help=f"hybrid: candidates pre-selected by agg per query [default: {DEFAULT_K}, or the split size if smaller]."),
    audio_track: str = typer.Option(str(D["audio_track"]), "--audio-track", callback=track_selector, help="Audio track to use: an index (0 = the first/original) or a language tag as stored, e.g. spa; clips without it are left out (with a warning)."),
    dtw_gamma: Optional[float] = typer.Option(D["dtw_gamma"], "--dtw-gamma", show_default=False, help="Soft-DTW models: the gamma of seq/hybrid re-ranking; 0 = hard DTW (exact minimum alignment) [default: the trained gamma]."),
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
    """Rank each clip's partner among all clips of one split, in both directions.

    A->V: each clip's audio queries all videos of the split; V->A the reverse.
    agg = cosine of mean-pooled latents; seq = the sequence distance the model was
    trained with (CAV models: interpolated Euclidean, video resampled); hybrid = agg
    top-k re-ranked by seq (a partner outside the top-k keeps its agg rank).
    Rank = 1 + candidates scoring strictly better + tied candidates with a smaller
    index. MedR = floor(median of 0-based ranks) + 1 (cav-mae convention).
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cfg = RetrieveConfig(
        checkpoint=str(checkpoint), split=split, cache=str(cache), method=method, k=k, dtw_gamma=dtw_gamma,
        audio_track=audio_track,
        json_path=str(json_path) if json_path else None, batch_size=batch_size, device=device,
        export=export, export_dir=str(export_dir) if export_dir else None,
        query_block=query_block, candidate_chunk=candidate_chunk, precision=precision,
    )
    from rich.console import Console

    from scav.core.schema import CacheError
    from scav.train.checkpoint import CheckpointError

    from .evaluate import run

    console = Console()
    err = Console(stderr=True)
    try:
        with console.status("encoding the split and searching..."):
            result = run(cfg)
    except (CacheError, CheckpointError, ValueError, OSError) as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(code=2)
    if cfg.json_path == "-":
        return
    console.print(render_table(result))
    if cfg.json_path:
        console.print(f"wrote {cfg.json_path}")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
