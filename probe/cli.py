"""`scav-probe`: linear / MLP probes on frozen SCAV embeddings of a labelled feature cache.

Embeds the train, val and test splits with a trained checkpoint (mean-pooled latents of
video, audio or both), fits a classifier on train, keeps the epoch with the best val top-1
and reports top-1 and mAP on test (the dubs paper's protocol, §4 / App. B.3).

Thin layer: builds a :class:`~scav.probe.config.ProbeConfig` (choices and defaults are read
from it) and calls :func:`scav.probe.pipeline.run`, imported only when the command runs, so
``--help`` does not import torch.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Literal, Optional

import typer
from scav.core.cli import VERSION_OPTION, json_option, make_app, track_selector
from scav.core.device import DEVICE_HELP

from .config import (
    MODALITIES,
    OPTIMIZER_DEFAULTS,
    OPTIMIZERS,
    PROBES,
    ProbeConfig,
    defaults,
)

app = make_app(help=__doc__.split("\n\n")[0])

D = defaults()
Modality = Literal[MODALITIES]
Probe = Literal[PROBES]
Optimizer = Literal[OPTIMIZERS]
_KIND_DEFAULTS = "; ".join(f"{k}: {v['optimizer']}, lr {v['lr']:g}, weight decay {v['weight_decay']:g}"
                           for k, v in OPTIMIZER_DEFAULTS.items())


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def render_table(result: dict):
    """A rich Table of the result dict: one row per split role (train, val, test)."""
    from rich.table import Table

    enc, p = result["encoders"], result["probe"]
    title = (
        f"{p['kind']} probe on {result['modality']} embeddings ({result['feature_dim']} dims) | "
        f"{result['num_classes']} classes | best epoch {result['best_epoch']}/{p['epochs']} (val top-1) | "
        f"video={enc['video']}, audio={enc['audio']} | step {result['step']}"
    )
    table = Table(title=title)
    for col in ("role", "split", "clips", "classes", "unseen-class clips", "top-1 %", "mAP %"):
        table.add_column(col, justify="left" if col in ("role", "split") else "right")
    for role, s in result["splits"].items():
        r = result["results"][role]
        table.add_row(role, s["split"], str(s["clips"]), str(s["classes"]), str(s["unseen_class_clips"]),
                      _fmt(r["top1"]), _fmt(r["mAP"]))
    return table


@app.command()
def main_command(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Trained checkpoint, e.g. runs/x/averaged.pt."),
    cache: Path = typer.Option(Path(D["cache"]), "--cache", help="Feature cache with labelled clips (scav-extract output)."),
    train_split: str = typer.Option(D["train_split"], "--train-split", help="Split the probe is trained on (its labels are the classes)."),
    val_split: str = typer.Option(D["val_split"], "--val-split", help="Split that picks the epoch (best top-1; ties: the earliest)."),
    test_split: str = typer.Option(D["test_split"], "--test-split", help="Split the result is reported on."),
    modality: Modality = typer.Option(D["modality"], "--modality", help="Embedding probed: the mean-pooled audio or video latents, or both concatenated."),
    probe: Probe = typer.Option(D["probe"], "--probe", help="linear (one affine layer) or mlp (one hidden layer, ReLU, dropout 0.1)."),
    epochs: int = typer.Option(D["epochs"], "--epochs", help="Training epochs (cosine decay of the lr to 0 over all of them)."),
    lr: Optional[float] = typer.Option(None, "--lr", show_default=False, help=f"Peak learning rate [default per probe: {_KIND_DEFAULTS}]."),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay", show_default=False, help="Weight decay [default: per probe, see --lr]."),
    optimizer: Optional[Optimizer] = typer.Option(None, "--optimizer", show_default=False, help="sgd (momentum 0.9) or adamw [default: per probe, see --lr]."),
    batch_size: int = typer.Option(D["batch_size"], "--batch-size", help="Clips per probe training step."),
    hidden: int = typer.Option(D["hidden"], "--hidden", help="mlp: hidden units."),
    seed: int = typer.Option(D["seed"], "--seed", help="Seed of the probe's initialisation, shuffling and dropout."),
    audio_track: str = typer.Option(str(D["audio_track"]), "--audio-track", callback=track_selector, help="Audio track to embed: an index (0 = the first/original) or a language tag as stored, e.g. spa; clips without it are left out (with a warning)."),
    json_path: Optional[str] = json_option("Also write the results as JSON to this file ('-' = standard output, then no table)."),
    device: str = typer.Option(D["device"], "--device", help=DEVICE_HELP + "."),
    embed_batch_size: int = typer.Option(D["embed_batch_size"], "--embed-batch-size", help="Clips per encoder batch when embedding."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details."),
    version: bool = VERSION_OPTION,
) -> None:
    """Fit a probe on frozen embeddings of --train-split, pick its epoch on --val-split,
    report top-1 and mAP on --test-split.

    Features are standardised with the train split's statistics. Clips without a label (or
    without video / the audio track) are left out with a warning; val/test clips of a class
    absent from train count as errors. Top-1 and mAP are printed in %, written to JSON as
    fractions. mAP = mean over the classes present of one-vs-rest average precision.
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cfg = ProbeConfig(
        checkpoint=str(checkpoint), cache=str(cache), train_split=train_split, val_split=val_split,
        test_split=test_split, modality=modality, probe=probe, epochs=epochs, lr=lr, weight_decay=weight_decay,
        optimizer=optimizer, batch_size=batch_size, hidden=hidden, seed=seed, audio_track=audio_track,
        device=device, embed_batch_size=embed_batch_size, json_path=str(json_path) if json_path else None,
    )
    from rich.console import Console
    from scav.core.schema import CacheError
    from scav.model.checkpoint import CheckpointError

    from .pipeline import run

    console = Console()
    err = Console(stderr=True)
    try:
        with console.status("embedding the splits and fitting the probe..."):
            result = run(cfg)
    except (CacheError, CheckpointError, ValueError, OSError) as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(code=2)
    if cfg.json_path == "-":
        return
    console.print(render_table(result))
    if result["stand_in_encoders"]:
        console.print("[yellow]note:[/yellow] the cache was built with parameter-free stand-in encoders: "
                      "these numbers say nothing about real features")
    if cfg.json_path:
        console.print(f"wrote {cfg.json_path}")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
