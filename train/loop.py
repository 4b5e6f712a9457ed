"""The training loop: ``run(cfg) -> summary``.

Output folder::

    config.json        the TrainConfig
    metrics.jsonl      one JSON object per event: train (every log_every steps), val
    ckpt/step_XXXXXXX.pt   the keep_best best checkpoints by validation R@1
    last.pt            full state for --resume (model, optimizer, scheduler, RNG, data position)
    averaged.pt        parameter average of the best checkpoints (what the paper evaluates)
    curves.png         loss and validation recall over steps

One module per job: :mod:`.schedule` (optimizer, learning rate), :mod:`.feed` (held-out
split, batch stream, crops and quadruplet views), :mod:`.guard` (NaN guard),
:mod:`.validation`, :mod:`.run_folder` (config.json, metrics, resume point) and
:mod:`.keep_best` (best checkpoints, averaged.pt); this module composes them.

The host reads the device only every ``log_every`` steps (and before a checkpoint):
a step queues its work and returns. The NaN guard still holds without a per-step
read: a non-finite loss or gradient skips the update on the device
(:class:`NonFiniteGuard`) and the next read stops the run naming that step, with
last.pt the last checkpoint before it.

Dub-augmented training (``cfg.dubs``, the dubs paper): :mod:`.feed` cuts each batch into
primary and secondary instances (:func:`scav.train.augment.make_quadruplets`), the model
encodes both in one forward (:func:`scav.train.feed.forward_pair`) and
``objective.compute_quad_loss`` contrasts them. ``same_source_fraction`` makes batches with same-source hard negatives
(``scav.core.source_batches``). Validation and checkpoints are as for pairs.

Precision: ``bf16`` autocasts the model; its outputs are cast to fp32 and the loss
(distance matrix, z-score, temperatures) is computed in fp32. Measured on B=32 pairs of
62 x 512 LayerNorm'd sequences: the interpolated Euclidean matrix from bf16 sequences is
off by up to 1.9 %, which moves the z-scored logits by up to 0.06 at lambda = 1 and 0.8 at
lambda = 0.07 (5e-4 from fp32 sequences); and at batch 32 the loss is a small part of a
step's FLOPs. Parameters, gradients and AdamW state stay fp32.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from scav.core.cache import FeatureCache
from scav.core.device import resolve_device
from scav.core.loader import Batch
from scav.model.checkpoint import make_payload, save_checkpoint
from scav.model.network import SCAVModel
from scav.model.objective import compute_loss, compute_quad_loss

from . import ddp
from .augment import QuadBatch, ViewMasks
from .config import TrainConfig
from .feed import BatchFeed, audio_rate, forward_pair, split_train_val, view_masks
from .guard import NonFiniteGuard, TrainingDiverged
from .keep_best import finish, validate_and_checkpoint
from .run_folder import MetricsLog, TrainState, prepare_run_folder, read_resume_point, restore_state, rng_state
from .schedule import make_optimizer, make_scheduler

log = logging.getLogger(__name__)

__all__ = ["run", "setup", "train_step", "read_losses", "Training", "TrainState", "TrainingDiverged"]


@dataclass
class Training:
    """What a run holds while it trains (built by :func:`setup`)."""

    cfg: TrainConfig
    out: Path
    device: torch.device
    dist: ddp.DistInfo
    cache: FeatureCache
    model: SCAVModel
    net: torch.nn.Module  # the model, or its DistributedDataParallel wrapper
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    state: TrainState
    metrics: MetricsLog | None  # main rank only
    rank_ids: list[str]  # this rank's training clips
    val_ids: list[str]
    fps: dict[str, float]  # video steps per second, per clip (random crops)
    audio_rate: float | None  # audio steps per second (the cache's; crops and dub windows)
    masks: ViewMasks  # of dub-augmented views
    guard: "NonFiniteGuard"

    def save_last(self) -> None:
        """last.pt: weights plus everything --resume needs to continue exactly."""
        extra = {"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                 "rng": rng_state(self.device), "train_state": dataclasses.asdict(self.state)}
        save_checkpoint(self.out / "last.pt", make_payload(self.model, self.cfg, self.cache.meta, self.state.step,
                                                           **extra))


def run(cfg: TrainConfig) -> dict:
    """Train according to ``cfg``; returns a summary dict (also logged)."""
    cfg.validate()
    device = resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    dist = ddp.init_distributed(device)
    # No torch.use_deterministic_algorithms: the CPU kernels used here are
    # deterministic already (tests/test_train_resume.py checks bit-equal losses)
    # and the call imports torch._inductor (~3 s).
    ok = False
    try:
        summary = _train(setup(cfg, device, dist))
        ok = True
        return summary
    finally:
        ddp.cleanup(synchronize=ok)


def _train(t: Training) -> dict:
    from tqdm import tqdm

    cfg, state = t.cfg, t.state
    bar = tqdm(total=cfg.steps, initial=state.step, disable=None if t.dist.is_main else True, dynamic_ncols=True)
    autocast = torch.autocast(t.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    feed = BatchFeed(t)
    rate = StepRate()
    try:
        while state.step < cfg.steps:
            train_step(t, feed.next(), autocast)
            rate.tick()
            bar.update(1)
            log_now, val_now = _due(state.step, cfg.log_every, cfg.steps), _due(state.step, cfg.val_every, cfg.steps)
            if log_now or val_now:
                values = read_losses(t)  # the host's one read of the device since the last one
                if log_now:
                    log_train_step(t, values, rate.read(), bar)
                if val_now:
                    validate_and_checkpoint(t)
    finally:
        feed.close()
    bar.close()
    summary = {"out": str(t.out), "steps": state.step, "params": t.model.num_trainable_parameters(),
               "final_loss": state.last_loss}
    if t.dist.is_main:
        summary.update(finish(t))
        log.info("training done: %s", json.dumps(summary))
    return summary


def setup(cfg: TrainConfig, device: torch.device, dist: ddp.DistInfo) -> Training:
    """Open the cache, split it, build model/optimizer/scheduler and restore a resumed run."""
    out = Path(cfg.out)
    cache = FeatureCache.open(cfg.cache)
    train_ids, val_ids = split_train_val(cache, cfg, dist.world_size)
    # Each rank trains on its own equal share of the clips (same epoch length everywhere).
    share = len(train_ids) // dist.world_size
    rank_ids = train_ids[dist.rank :: dist.world_size][:share]
    fps = {c.clip_id: (cache.meta.video.steps_per_second or c.fps or 1.0) for c in cache.clips(cfg.split)}
    rate, masks = audio_rate(cfg, cache.meta), view_masks(cfg, cache.meta)  # refused before anything is written
    resume = read_resume_point(cfg, out, cache)

    torch.manual_seed(cfg.seed)  # initial weights: the same on every rank
    model = SCAVModel(cfg.model, cache.meta.video.dim, cache.meta.audio.dim, cfg.objective).to(device)
    opt = make_optimizer(model, cfg)
    sched = make_scheduler(opt, cfg)
    torch.manual_seed(cfg.seed + 7919 * (dist.rank + 1))  # dropout differs per rank
    state = restore_state(resume, model, opt, sched, device) if resume is not None else TrainState()
    metrics = None
    if dist.is_main:
        metrics = prepare_run_folder(cfg, out, state.step if resume is not None else None)
        n_params = model.num_trainable_parameters()
        log.info("SCAV model: %s trainable parameters (%.1f M)", f"{n_params:,}", n_params / 1e6)
    net = model
    if dist.world_size > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return Training(cfg, out, device, dist, cache, model, net, opt, sched, state, metrics, rank_ids, val_ids, fps,
                    rate, masks, NonFiniteGuard(opt, device))


def _due(step: int, every: int, last: int) -> bool:
    return step % every == 0 or step == last


def train_step(t: Training, batch: tuple[int, int, Batch], autocast) -> dict[str, torch.Tensor]:
    """One optimizer step on ``(epoch, index in epoch, batch)``; -> the batch's named losses
    (device tensors). No host sync: a non-finite loss or gradient skips the update on the
    device and stops the run at the next :func:`read_losses`."""
    epoch, index, batch = batch
    t.model.train()
    if isinstance(batch, QuadBatch):
        with autocast:
            out_p, out_s = forward_pair(t.net, batch.primary, batch.secondary)
        out_p, out_s = _float(out_p), _float(out_s)
        losses = compute_quad_loss(out_p, out_s, t.model, t.cfg.objective, t.cfg.dubs, t.dist)
    else:
        with autocast:  # the model in bf16 when asked; the loss below in fp32 (module docstring)
            out = t.net(batch.video, batch.video_mask, batch.audio, batch.audio_mask)
        losses = compute_loss(_float(out), t.model, t.cfg.objective, t.dist)
    t.opt.zero_grad(set_to_none=True)
    losses["loss"].backward()
    loss_ok = t.guard.check(losses["loss"], t.model.parameters())
    t.opt.step()  # fused AdamW: no update while guard.flag is set
    t.sched.step()
    t.state.step += 1
    t.state.epoch, t.state.batch_in_epoch = epoch, index + 1
    t.guard.record(t.state.step, losses, loss_ok)
    return losses


def _float(out: dict) -> dict:
    return {k: v.float() if v.is_floating_point() else v for k, v in out.items()}


def read_losses(t: Training) -> dict[str, float]:
    """Read the steps' losses waiting on the device (one host sync); -> the latest step's
    scalars. Raises TrainingDiverged naming the first non-finite step, if any."""
    got = t.guard.read()
    if got is None:
        return {"loss": t.state.last_loss}
    step, values, flagged, loss_finite = got
    if flagged:
        _diverged(t, step, values, "loss" if not loss_finite else "gradient")
    t.state.last_loss = values["loss"]
    return values


class StepRate:
    """Steps per second since the previous reading."""

    def __init__(self) -> None:
        self.t0, self.steps = time.perf_counter(), 0

    def tick(self) -> None:
        self.steps += 1

    def read(self) -> float:
        now = time.perf_counter()
        rate = self.steps / max(now - self.t0, 1e-9)
        self.t0, self.steps = now, 0
        return rate


def temperatures(t: Training) -> dict[str, float]:
    """The temperatures the objective trains: CAV's ``tau``, SCAV's ``lambda`` (not the unused one)."""
    obj, model = t.cfg.objective, t.model
    out = {}
    if obj.uses_cav:
        out["tau"] = math.exp(-float(model.logit_scale.detach()))
    if obj.uses_scav:
        out["lambda"] = math.exp(float(model.log_lambda.detach()))
    return out


def log_train_step(t: Training, values: dict[str, float], steps_per_s: float, bar) -> None:
    """A train event (the step's losses, lr, temperatures, speed) to metrics.jsonl and the progress bar."""
    loss = values["loss"]
    event = {"event": "train", "step": t.state.step, "epoch": t.state.epoch, "loss": loss,
             **{k: v for k, v in values.items() if k.endswith("_loss") or "within_" in k},
             "lr": t.sched.get_last_lr()[0], **temperatures(t), "steps_per_s": steps_per_s}
    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{event['lr']:.2e}", it_s=f"{steps_per_s:.1f}")
    if t.metrics:
        t.metrics.write(event)


def _diverged(t: Training, step: int, values: dict[str, float], what: str) -> None:
    """Stop the run at ``step``, the first with a non-finite ``what`` ('loss' or 'gradient').
    The temperatures named are the model's now: those of the last good step (the guard
    skipped every update since)."""
    temps = temperatures(t)
    if t.metrics:
        t.metrics.write({"event": "diverged", "step": step, "non_finite": what, **values, **temps})
    last = t.out / "last.pt"
    kept = f"last good checkpoint kept: {last}" if last.exists() else "no checkpoint was written yet"
    raise TrainingDiverged(f"non-finite {what} at step {step}: {values}, temperatures {temps}; {kept}")
