"""`scav-train`: train a SCAV (or CAV) model on a feature cache.

Thin layer: builds a TrainConfig and calls ``scav.train.loop.run``. torch is
imported only when training starts, so ``--help`` is fast.

Multi-GPU: ``torchrun --nproc_per_node=G -m scav.train.cli --cache ...``
(effective batch = G x --batch-size, negatives gathered from every GPU).
"""

from __future__ import annotations

import logging
import sys
from enum import Enum
from typing import Optional

import typer

from scav.cli_common import VERSION_OPTION, make_app

from .config import ModelConfig, ObjectiveConfig, TrainConfig

app = make_app(help=__doc__.split("\n\n")[0])


class Objective(str, Enum):
    scav = "scav"
    cav = "cav"
    cav_scav = "cav+scav"


class Distance(str, Enum):
    euclidean = "euclidean"
    soft_dtw = "soft_dtw"
    wasserstein = "wasserstein"


class Interp(str, Enum):
    pre = "pre"
    post = "post"


class Resample(str, Enum):
    video = "video"
    audio = "audio"


class Direction(str, Enum):  # deprecated alias of Resample (one release)
    v2a = "v2a"
    a2v = "a2v"


class Precision(str, Enum):
    fp32 = "fp32"
    bf16 = "bf16"


def default_interp(objective: str, distance: str) -> str:
    """'pre' for SCAV with the Euclidean distance (paper's best on VGGSound), else 'post'
    (for CAV 'post' means: no interpolation at all during training)."""
    return "pre" if objective != "cav" and distance == "euclidean" else "post"


def build_config(
    cache: str, out: str, objective: str = "scav", distance: str = "euclidean", interp: str | None = None,
    resample: str = "video", steps: int = 250_000, batch_size: int = 32, lr: float = 7e-4, warmup: int = 5000,
    weight_decay: float = 0.01, val_clips: int = 550, val_every: int = 1000, keep_best: int = 10,
    log_every: int = 50, precision: str = "fp32", workers: int = 0, crop: float | None = None, c: int = 512,
    video_layers: int = 8, audio_layers: int = 2, heads: int = 8, normalize: bool = True,
    lambda_init: float = 1.0, seed: int = 0, device: str = "auto", resume: bool = False,
) -> TrainConfig:
    model = ModelConfig(c=c, video_layers=video_layers, audio_layers=audio_layers, heads=heads)
    obj = ObjectiveConfig(
        kind=objective, distance=distance, interp=interp or default_interp(objective, distance),
        resample=resample, normalize=normalize, lambda_init=lambda_init,
    )
    cfg = TrainConfig(
        cache=cache, out=out, val_clips=val_clips, val_every=val_every, steps=steps, batch_size=batch_size,
        lr=lr, weight_decay=weight_decay, warmup_steps=warmup, seed=seed, precision=precision,
        num_workers=workers, random_crop=crop, keep_best=keep_best, log_every=log_every, device=device,
        resume=resume, model=model, objective=obj,
    )
    cfg.validate()
    return cfg


@app.command()
def train(
    cache: str = typer.Option(..., "--cache", help="Feature cache written by `scav-extract` (a .zarr folder)."),
    out: Optional[str] = typer.Option(None, "--out", help="Run folder (default: runs/OBJECTIVE-DISTANCE-INTERP-DIRECTION)."),
    objective: Objective = typer.Option(Objective.scav, "--objective", help="scav: sequence-distance contrastive loss; cav: mean-pooled cosine (InfoNCE); cav+scav: both summed."),
    distance: Distance = typer.Option(Distance.euclidean, "--distance", help="Sequence distance of the SCAV loss (and of sequence retrieval in validation)."),
    interp: Optional[Interp] = typer.Option(None, "--interp", help="Interpolate raw features before the encoders (pre) or latents inside the distance (post); default: pre for scav+euclidean, else post."),
    resample: Optional[Resample] = typer.Option(None, "--resample", help="Which modality is interpolated to the other's length: video (paper's v->a) or audio (a->v) [default: video]."),
    direction: Optional[Direction] = typer.Option(None, "--direction", hidden=True, help="Deprecated: --resample (v2a = video, a2v = audio)."),
    steps: int = typer.Option(250_000, "--steps", help="Optimizer steps."),
    batch_size: int = typer.Option(32, "--batch-size", help="Clips per step and per process (negatives = world size x this)."),
    lr: float = typer.Option(7e-4, "--lr", help="Peak learning rate (AdamW, betas 0.95/0.98)."),
    warmup: int = typer.Option(5000, "--warmup", help="Linear warm-up steps before the cosine decay."),
    weight_decay: float = typer.Option(0.01, "--weight-decay", help="AdamW weight decay (matrices only)."),
    val_clips: int = typer.Option(550, "--val-clips", help="Clips held out of the training split for validation (0: none)."),
    val_every: int = typer.Option(1000, "--val-every", help="Validate, keep best checkpoints and write last.pt every N steps."),
    keep_best: int = typer.Option(10, "--keep-best", help="Best checkpoints kept and averaged into averaged.pt."),
    log_every: int = typer.Option(50, "--log-every", help="Write a train event to metrics.jsonl every N steps."),
    precision: Precision = typer.Option(Precision.fp32, "--precision", help="fp32 (paper) or bf16 autocast."),
    workers: int = typer.Option(0, "--workers", help="DataLoader worker processes reading the cache."),
    crop: Optional[float] = typer.Option(None, "--crop", help="Random temporal crop in seconds (same window in both modalities)."),
    c: int = typer.Option(512, "--c", help="Latent width of both encoders."),
    video_layers: int = typer.Option(8, "--video-layers", help="Transformer blocks of the video encoder."),
    audio_layers: int = typer.Option(2, "--audio-layers", help="Transformer blocks of the audio encoder."),
    heads: int = typer.Option(8, "--heads", help="Attention heads."),
    no_normalize: bool = typer.Option(False, "--no-normalize", help="Ablation: do not z-score the distance matrix."),
    lambda_init: float = typer.Option(1.0, "--lambda-init", help="Initial SCAV temperature lambda (paper 1.0; ablation 0.07)."),
    seed: int = typer.Option(0, "--seed", help="Seed of initialisation, data order and validation choice."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last.pt (same options)."),
    version: bool = VERSION_OPTION,
) -> None:
    """Train a SCAV/CAV model; writes checkpoints, metrics.jsonl, averaged.pt and curves.png."""
    from scav.core.schema import CacheError

    from .config import LEGACY_DIRECTION

    if direction is not None:
        typer.echo("warning: --direction is deprecated and will be removed in the next release; "
                   f"use --resample {LEGACY_DIRECTION[direction.value]}", err=True)
        if resample is not None and resample.value != LEGACY_DIRECTION[direction.value]:
            typer.echo("error: --direction and --resample disagree", err=True)
            raise typer.Exit(2)
    resample_v = resample.value if resample else LEGACY_DIRECTION[direction.value] if direction else "video"
    interp_v = interp.value if interp else default_interp(objective.value, distance.value)
    out = out or f"runs/{objective.value}-{distance.value}-{interp_v}-{resample_v}"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = build_config(
            cache, out, objective.value, distance.value, interp_v, resample_v, steps, batch_size, lr, warmup,
            weight_decay, val_clips, val_every, keep_best, log_every, precision.value, workers, crop, c,
            video_layers, audio_layers, heads, not no_normalize, lambda_init, seed, device, resume,
        )
        from .loop import TrainingDiverged, run

        try:
            summary = run(cfg)
        except TrainingDiverged as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(3)
    except (CacheError, ValueError) as e:  # CheckpointError is a ValueError
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    typer.echo(f"done: {summary['steps']} steps, averaged model in {summary.get('averaged', out)}")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
