"""`scav-retrieve`: audio-visual retrieval within one split of a feature cache.

Encodes the split with a trained checkpoint and ranks, in both directions (A->V:
audio queries, video candidates; V->A the reverse), every clip's partner among all
clips of the split, with the aggregation (agg), sequence (seq) or hybrid method
(paper §III-D). Prints R@1/R@5/R@10 (%), MedR and MeanR; ``--json`` writes them.

Ranks: 1 + candidates scoring strictly better + tied candidates with a smaller
index. hybrid: agg top-k re-ranked by seq; a partner outside the top-k keeps its agg rank.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from scav.cli_common import VERSION_OPTION, json_option, make_app, write_json

log = logging.getLogger(__name__)

app = make_app(help=__doc__.split("\n\n")[0])

METHOD_CHOICES = ("agg", "seq", "hybrid", "all")
DEFAULT_K = 100


@dataclass(frozen=True)
class RetrieveConfig:
    """One retrieval run. ``export``: keep the latents next to the cache, in
    ``export_dir`` (default ``<cache>.retrieval``), and reuse them on later runs."""

    checkpoint: str
    split: str
    cache: str = "features.zarr"
    method: str = "all"
    k: int | None = None  # None: min(DEFAULT_K, split size); an explicit k > split size is an error
    json_path: str | None = None
    batch_size: int = 64
    device: str = "auto"
    export: bool = False
    export_dir: str | None = None
    query_block: int = 1024
    candidate_chunk: int = 1024

    def validate(self) -> None:
        if self.method not in METHOD_CHOICES:
            raise ValueError(f"method must be one of {METHOD_CHOICES}, got {self.method!r}")
        if self.k is not None and self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.batch_size < 1 or self.query_block < 1 or self.candidate_chunk < 1:
            raise ValueError("batch size, query block and candidate chunk must be >= 1")
        from scav.core.device import check_device_name

        check_device_name(self.device)

    @property
    def methods(self) -> tuple[str, ...]:
        return ("agg", "seq", "hybrid") if self.method == "all" else (self.method,)

    @property
    def export_root(self) -> Path:
        return Path(self.export_dir) if self.export_dir else Path(f"{self.cache}.retrieval")


def run(cfg: RetrieveConfig, progress=None) -> dict:
    """Encode the split, search, and return the result dict (see module doc / README).

    Raises CacheError / CheckpointError / ValueError with a readable message on bad input.
    """
    from scav.core.cache import FeatureCache
    from scav.core.schema import CacheError
    from scav.train.checkpoint import CheckpointError, check_cache_matches, load_model

    from . import embed, search
    from scav.sequence.metrics import summarize_ranks

    cfg.validate()
    cache = FeatureCache.open(cfg.cache)
    clips = cache.require_split(cfg.split)
    clips, skipped = embed.usable_clips(clips)
    if skipped:
        log.warning("%d clips of %s lack video or audio steps and are left out, e.g. %s",
                    len(skipped), cfg.split, skipped[0].clip_id)
    if not clips:
        raise CacheError(f"split {cfg.split!r} has no clip with both video and audio steps")
    n = len(clips)
    if "hybrid" in cfg.methods and cfg.k is not None and cfg.k > n:
        raise ValueError(f"k={cfg.k} is larger than split {cfg.split!r} ({n} clips); use --k {n} or less")
    k = min(DEFAULT_K, n) if cfg.k is None else cfg.k
    if not Path(cfg.checkpoint).is_file():
        raise CheckpointError(f"no checkpoint at {cfg.checkpoint}")
    from scav.core.device import resolve_device

    device = resolve_device(cfg.device)
    model, train_cfg, meta = load_model(cfg.checkpoint, map_location=device)
    check_cache_matches(meta, cache.meta, what=f"checkpoint {cfg.checkpoint}")
    if meta["video_dim"] != cache.meta.video.dim or meta["audio_dim"] != cache.meta.audio.dim:
        raise CacheError(
            f"checkpoint expects feature sizes video={meta['video_dim']}, audio={meta['audio_dim']}; "
            f"the cache holds video={cache.meta.video.dim}, audio={cache.meta.audio.dim}"
        )
    objective = train_cfg.objective
    distance = search.SeqDistance.from_objective(objective)
    encoders = {"video": cache.meta.video.label, "audio": cache.meta.audio.label}

    t0 = time.perf_counter()
    kw = dict(batch_size=cfg.batch_size, device=device, progress=progress)
    if cfg.export:
        folder = embed.export_folder(cfg.export_root, cfg.split, embed.checkpoint_hash(cfg.checkpoint))
        lat = embed.load_export(folder, [c.clip_id for c in clips]) if folder.exists() else None
        if lat is None:
            export_meta = {
                "checkpoint": str(cfg.checkpoint), "step": meta["step"], "split": cfg.split,
                "cache": str(cfg.cache), "cache_fingerprint": cache.meta.fingerprint(),
                "encoders": {m: e.to_dict() for m, e in meta["encoders"].items()},
                "objective": train_cfg.to_dict()["objective"], "clips": n,
            }
            lat = embed.embed_and_export(model, objective, cfg.cache, cfg.split, clips, folder, export_meta, **kw)
        else:
            log.info("reusing the latents exported in %s", folder)
    else:
        lat = embed.embed_split(model, objective, cfg.cache, cfg.split, clips, **kw)
    embed_seconds = time.perf_counter() - t0
    del model

    scfg = search.SearchConfig(query_block=cfg.query_block, candidate_chunk=cfg.candidate_chunk, device=str(device))
    results = search.retrieve(lat.video, lat.audio, cfg.methods, k, distance, scfg)

    per_method = {}
    for m in cfg.methods:
        per_method[m] = {
            "seconds": sum(results[d].seconds[m] for d in search.DIRECTIONS),
            **{d: summarize_ranks(results[d].ranks[m]) for d in search.DIRECTIONS},
        }
    out = {
        "split": cfg.split,
        "method": cfg.method,
        "k": k if "hybrid" in cfg.methods else None,
        "checkpoint": str(cfg.checkpoint),
        "step": meta["step"],
        "encoders": encoders,
        "stand_in_encoders": bool(cache.meta.video.stand_in or cache.meta.audio.stand_in),
        "objective": {"kind": objective.kind, "distance": objective.distance,
                      "interp": objective.interp, "resample": objective.resample},
        "seq_distance": distance.label,
        "num_queries": n,
        "num_candidates": n,
        "skipped_clips": len(skipped),
        "device": str(device),
        "embed_seconds": embed_seconds,
        "export": str(lat.folder) if lat.folder else None,
        "results": per_method,
    }
    if len(cfg.methods) == 1:
        m = cfg.methods[0]
        out.update(seconds=per_method[m]["seconds"], a2v=per_method[m]["a2v"], v2a=per_method[m]["v2a"])
    else:
        out["seconds"] = sum(v["seconds"] for v in per_method.values())
    write_json(cfg.json_path, out)
    return out


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


class Method(str, Enum):
    agg = "agg"
    seq = "seq"
    hybrid = "hybrid"
    all = "all"


@app.command()
def main_command(
    split: str = typer.Option(..., "--split", help="Split of the cache to search within (e.g. music-test)."),
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Trained checkpoint, e.g. runs/x/averaged.pt."),
    cache: Path = typer.Option(Path("features.zarr"), "--cache", help="Feature cache (scav-extract output)."),
    method: Method = typer.Option(Method.all, "--method", help="agg (cosine of means), seq (trained sequence distance), hybrid (agg top-k re-ranked by seq) or all."),
    k: Optional[int] = typer.Option(None, "--k", help=f"hybrid: candidates pre-selected by agg per query [default: {DEFAULT_K}, or the split size if smaller]."),
    json_path: Optional[str] = json_option("Also write the results as JSON to this file ('-' = standard output, then no table)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Clips per encoder batch."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]."),
    export: bool = typer.Option(False, "--export", help="Keep latents next to the cache (<cache>.retrieval/<split>-<ckpt hash>/, .npy, memory-mapped) and reuse them later."),
    export_dir: Optional[Path] = typer.Option(None, "--export-dir", help="Folder for --export instead of <cache>.retrieval."),
    query_block: int = typer.Option(1024, "--query-block", help="Queries scored together (memory, not results)."),
    candidate_chunk: int = typer.Option(1024, "--candidate-chunk", help="Candidates scored together (memory, not results)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details."),
    version: bool = VERSION_OPTION,
) -> None:
    """Rank each clip's partner among all clips of one split, in both directions.

    A->V: each clip's audio queries all videos of the split; V->A the reverse.
    agg = cosine of mean-pooled latents; seq = the sequence distance the model was
    trained with (CAV models: interpolated Euclidean v->a); hybrid = agg top-k
    re-ranked by seq (a partner outside the top-k keeps its agg rank).
    Rank = 1 + candidates scoring strictly better + tied candidates with a smaller
    index. MedR = floor(median of 0-based ranks) + 1 (cav-mae convention).
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cfg = RetrieveConfig(
        checkpoint=str(checkpoint), split=split, cache=str(cache), method=method.value, k=k,
        json_path=str(json_path) if json_path else None, batch_size=batch_size, device=device,
        export=export, export_dir=str(export_dir) if export_dir else None,
        query_block=query_block, candidate_chunk=candidate_chunk,
    )
    from rich.console import Console

    console = Console()
    err = Console(stderr=True)
    try:
        from scav.core.schema import CacheError
        from scav.train.checkpoint import CheckpointError

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
