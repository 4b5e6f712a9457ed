"""`scav-train`: train a SCAV (or CAV) model on a feature cache.

Thin layer: builds a TrainConfig and calls ``scav.train.loop.run``. Choices and
defaults are read from the config dataclasses (scav.train.config), never
written here again. torch is imported only when training starts, so ``--help``
is fast.

Multi-GPU: ``torchrun --nproc_per_node=G -m scav.train.cli --cache ...``
(effective batch = G x --batch-size, negatives gathered from every GPU).
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal, Optional

import typer
from scav.core.cli import VERSION_OPTION, make_app, track_selector
from scav.core.device import DEVICE_HELP

from scav.model.config import DISTANCES, INTERPS, OBJECTIVES, RESAMPLES, ModelConfig, ObjectiveConfig, field_defaults

from .config import DUB_VARIANTS, PRECISIONS, WINDOW_MODES, DubsConfig, TrainConfig

app = make_app(help=__doc__.split("\n\n")[0])

T = field_defaults(TrainConfig)
M = field_defaults(ModelConfig)
O = field_defaults(ObjectiveConfig)  # noqa: E741
DB = field_defaults(DubsConfig)
# Choices: Literal[tuple] == Literal[*tuple]; typer turns them into click choices.
Kind = Literal[OBJECTIVES]
Distance = Literal[DISTANCES]
Interp = Literal[INTERPS]
Resample = Literal[RESAMPLES]
Precision = Literal[PRECISIONS]
DubVariant = Literal[DUB_VARIANTS]
DubWindows = Literal[WINDOW_MODES]


def default_out(obj: ObjectiveConfig) -> str:
    """The run folder when --out is not given: runs/KIND-DISTANCE-INTERP-RESAMPLE."""
    return f"runs/{obj.kind}-{obj.distance}-{obj.interp}-{obj.resample}"


def build_config(
    cache: str,
    out: str | None = None,
    *,
    model: dict[str, Any] | None = None,
    objective: dict[str, Any] | None = None,
    dubs: dict[str, Any] | None = None,
    **train: Any,
) -> TrainConfig:
    """A validated TrainConfig from keywords named as the dataclass fields.

    ``model`` / ``objective`` / ``dubs``: ModelConfig / ObjectiveConfig / DubsConfig fields; ``train``:
    TrainConfig fields. Missing fields keep the dataclass defaults, except an
    absent or None ``objective['interp']`` (see ``ObjectiveConfig.with_default_interp``).
    """
    obj = ObjectiveConfig.with_default_interp(**(objective or {}))
    cfg = TrainConfig(cache=cache, out=out or default_out(obj), model=ModelConfig(**(model or {})), objective=obj,
                      dubs=DubsConfig(**(dubs or {})), **train)
    cfg.validate()
    return cfg


def _drop_none(**kw: Any) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}


@app.command()
def train(
    cache: str = typer.Option(..., "--cache", help="Feature cache written by `scav-extract` (a .zarr folder)."),
    out: Optional[str] = typer.Option(None, "--out", help="Run folder (default: runs/OBJECTIVE-DISTANCE-INTERP-RESAMPLE)."),
    objective: Kind = typer.Option(O["kind"], "--objective", help="scav: sequence-distance contrastive loss; cav: mean-pooled cosine (InfoNCE); cav+scav: both summed."),
    distance: Distance = typer.Option(O["distance"], "--distance", help="Sequence distance of the SCAV loss (and of sequence retrieval in validation)."),
    interp: Optional[Interp] = typer.Option(None, "--interp", help="Interpolate raw features before the encoders (pre) or latents inside the distance (post); default: pre for scav+euclidean, else post."),
    resample: Optional[Resample] = typer.Option(None, "--resample", help=f"Which modality is interpolated to the other's length: video (paper's v->a) or audio (a->v) [default: {O['resample']}]."),
    steps: int = typer.Option(T["steps"], "--steps", help="Optimizer steps."),
    batch_size: int = typer.Option(T["batch_size"], "--batch-size", help="Clips per step and per process (negatives = world size x this)."),
    lr: float = typer.Option(T["lr"], "--lr", help=f"Peak learning rate (AdamW, betas {T['betas'][0]}/{T['betas'][1]})."),
    warmup: int = typer.Option(T["warmup_steps"], "--warmup", help="Linear warm-up steps before the cosine decay."),
    weight_decay: float = typer.Option(T["weight_decay"], "--weight-decay", help="AdamW weight decay (matrices only)."),
    split: str = typer.Option(T["split"], "--split", help="Cache split to train on (validation clips are held out of it)."),
    audio_track: str = typer.Option(str(T["audio_track"]), "--audio-track", callback=track_selector, help="Audio track to train on: an index (0 = the first/original) or a language tag as stored, e.g. spa; every clip must have it."),
    val_clips: int = typer.Option(T["val_clips"], "--val-clips", help="Clips held out of the training split for validation (0: none)."),
    val_every: int = typer.Option(T["val_every"], "--val-every", help="Validate, keep best checkpoints and write last.pt every N steps."),
    keep_best: int = typer.Option(T["keep_best"], "--keep-best", help="Best checkpoints kept and averaged into averaged.pt."),
    log_every: int = typer.Option(T["log_every"], "--log-every", help="Write a train event to metrics.jsonl every N steps; also how often the host reads the "
                                   "GPU (loss, NaN guard): no sync in between."),
    precision: Precision = typer.Option(T["precision"], "--precision", help="fp32 (paper) or bf16 autocast of the model (the loss stays fp32)."),
    workers: int = typer.Option(T["num_workers"], "--workers", help="DataLoader worker processes reading the cache."),
    crop: Optional[float] = typer.Option(T["random_crop"], "--crop", help="Random temporal crop in seconds (same window in both modalities)."),
    same_source: float = typer.Option(T["same_source_fraction"], "--same-source", help="Fraction of each batch drawn from one source (long video) as hard negatives; the dubs paper uses 0.125 (1/8). 0: uniform batches."),
    dubs: DubVariant = typer.Option(DB["variant"], "--dubs", help="Dub-augmented quadruplet training (dubs paper; its augmentation by default: two windows, audio time and frequency masks): monolingual (control: the same track, two differently augmented views), bilingual (secondary = --dub-language), multilingual (the clip's other tracks in turn), audio-only (within-modal terms only)."),
    dub_language: Optional[str] = typer.Option(DB["language"], "--dub-language", help="bilingual: language tag of the secondary audio track, as stored (e.g. spa)."),
    dub_window: float = typer.Option(DB["window"], "--dub-window", help="Seconds per quadruplet instance (paper: 3); 0 = the whole clip."),
    dub_windows: Optional[DubWindows] = typer.Option(DB["windows"], "--dub-windows", show_default=False, help="How the two views' windows are drawn: jitter (independent, the paper's: v_p and a_s cover different seconds), aligned (independent, crossed so that each contrasted cross-modal pair covers the same seconds), same (one window) [default: jitter for cav, aligned for sequence objectives]."),
    audio_time_mask: float = typer.Option(DB["audio_time_mask"], "--audio-time-mask", help="Dubs: each audio view's time mask covers up to this fraction of its steps (paper: 0.5 of the spectrogram's time axis)."),
    audio_freq_mask: Optional[float] = typer.Option(DB["audio_freq_mask"], "--audio-freq-mask", show_default=False, help="Dubs: each audio view's frequency mask covers up to this fraction of its frequency bands (BEATs: 8 patch blocks; fbank: 128 mel bins) [default: the paper's 0.5 where the cache records the layout, else none]."),
    video_time_mask: float = typer.Option(DB["video_time_mask"], "--video-time-mask", help="Dubs: time mask of up to this fraction of each video view's steps (0: video views unmasked)."),
    lambda_v: float = typer.Option(DB["lambda_v"], "--lambda-v", help="Dubs: weight of the within-modal video term (Eq. 3); 0 = logged (computed without gradient), not trained."),
    lambda_a: float = typer.Option(DB["lambda_a"], "--lambda-a", help="Dubs: weight of the within-modal audio term (Eq. 3); audio-only needs > 0."),
    c: int = typer.Option(M["c"], "--c", help="Latent width of both encoders."),
    video_layers: int = typer.Option(M["video_layers"], "--video-layers", help="Transformer blocks of the video encoder."),
    audio_layers: int = typer.Option(M["audio_layers"], "--audio-layers", help="Transformer blocks of the audio encoder."),
    heads: int = typer.Option(M["heads"], "--heads", help="Attention heads."),
    normalize: bool = typer.Option(O["normalize"], "--normalize/--no-normalize", help="z-score the distance matrix (--no-normalize: the Table IV ablation)."),
    lambda_init: float = typer.Option(O["lambda_init"], "--lambda-init", help="Initial SCAV temperature lambda (paper 1.0; ablation 0.07)."),
    seed: int = typer.Option(T["seed"], "--seed", help="Seed of initialisation, data order and validation choice."),
    device: str = typer.Option(T["device"], "--device", help=DEVICE_HELP + "."),
    resume: bool = typer.Option(T["resume"], "--resume", help="Continue the run in --out from its last.pt (same options; see its config.json). A run stopped before its first last.pt (written every --val-every steps) has nothing to continue: it is started again from step 0, and the log says so."),
    version: bool = VERSION_OPTION,
) -> None:
    """Train a SCAV/CAV model; writes checkpoints, metrics.jsonl, averaged.pt and curves.png."""
    from scav.core.schema import CacheError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        objective_kw = _drop_none(kind=objective, distance=distance, interp=interp,
                                  resample=resample, normalize=normalize,
                                  lambda_init=lambda_init)
        cfg = build_config(
            cache, out, objective=objective_kw,
            model=dict(c=c, video_layers=video_layers, audio_layers=audio_layers, heads=heads),
            dubs=dict(variant=dubs, language=dub_language, window=dub_window or None, windows=dub_windows,
                      audio_time_mask=audio_time_mask, audio_freq_mask=audio_freq_mask,
                      video_time_mask=video_time_mask, lambda_v=lambda_v, lambda_a=lambda_a),
            same_source_fraction=same_source,
            split=split, audio_track=audio_track, steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup, weight_decay=weight_decay,
            val_clips=val_clips, val_every=val_every, keep_best=keep_best, log_every=log_every, precision=precision,
            num_workers=workers, random_crop=crop, seed=seed, device=device, resume=resume,
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
    typer.echo(f"done: {summary['steps']} steps, averaged model in {summary.get('averaged', cfg.out)}")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
