"""The training loop: ``run(cfg) -> summary``.

Output folder::

    config.json        the TrainConfig
    metrics.jsonl      one JSON object per event: train (every log_every steps), val
    ckpt/step_XXXXXXX.pt   the keep_best best checkpoints by validation R@1
    last.pt            full state for --resume (model, optimizer, scheduler, RNG, data position)
    averaged.pt        parameter average of the best checkpoints (what the paper evaluates)
    curves.png         loss and validation recall over steps

Data order is a pure function of (seed, epoch) in ``scav.core.loader``; the
state records (epoch, batch within epoch), so a resumed run reads exactly the
batches an uninterrupted one would have read.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from scav.core.cache import FeatureCache
from scav.core.device import resolve_device
from scav.core.loader import Batch, iter_eval_batches, make_train_loader

from . import ddp
from .checkpoint import (
    average_state_dicts,
    check_cache_matches,
    make_payload,
    read_checkpoint,
    save_checkpoint,
)
from .config import TrainConfig
from .model import SCAVModel
from .objective import compute_loss, sequence_distance

log = logging.getLogger(__name__)

AUDIO_STEPS_PER_SECOND = 6.25  # BEATs: 16 fbank frames of 10 ms per step
RESUME_MAY_DIFFER = {"resume", "device", "num_workers", "log_every", "steps"}


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the message names the step and the values."""


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of `epoch` already consumed
    best: list[list[float]] = field(default_factory=list)  # [[score, step], ...], best first
    last_loss: float = math.nan


# -- schedule, data ---------------------------------------------------------


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to 1, then cosine to ``min_lr_ratio`` at ``cfg.steps``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def split_train_val(cache: FeatureCache, cfg: TrainConfig, world_size: int = 1) -> tuple[list[str], list[str]]:
    """Hold ``val_clips`` clips out of the training split (a fixed choice per seed)."""
    ids = sorted(c.clip_id for c in cache.require_split(cfg.split))
    n = len(ids)
    if cfg.val_clips >= n:
        raise ValueError(
            f"split {cfg.split!r} has {n} clips; holding out val_clips={cfg.val_clips} for validation "
            "leaves none to train on: pass a smaller --val-clips"
        )
    perm = np.random.default_rng(cfg.seed).permutation(n)
    val = sorted(ids[i] for i in perm[: cfg.val_clips])
    held = set(val)
    train = [c for c in ids if c not in held]
    if len(train) // world_size < cfg.batch_size:
        raise ValueError(
            f"batch size {cfg.batch_size} (x {world_size} processes) is larger than the {len(train)} training "
            f"clips of split {cfg.split!r} ({n} minus {cfg.val_clips} held out for validation)"
        )
    return train, val


def random_crop(batch: Batch, fps: list[float], seconds: float, gen: torch.Generator) -> Batch:
    """Crop every clip to the same ``seconds`` window in both modalities.

    fps[i]: video steps per second of clip i; audio has 6.25 steps/s. Clips no
    longer than the window are kept whole. Masks stay prefix masks.
    """
    vids, auds = [], []
    for i in range(len(batch)):
        nv, na = int(batch.video_mask[i].sum()), int(batch.audio_mask[i].sum())
        dur = min(nv / fps[i], na / AUDIO_STEPS_PER_SECOND)
        if dur <= seconds:
            vids.append(batch.video[i, :nv])
            auds.append(batch.audio[i, :na])
            continue
        t0 = float(torch.rand((), generator=gen)) * (dur - seconds)
        v0, a0 = int(t0 * fps[i]), int(t0 * AUDIO_STEPS_PER_SECOND)
        lv = max(1, min(nv - v0, round(seconds * fps[i])))
        la = max(1, min(na - a0, round(seconds * AUDIO_STEPS_PER_SECOND)))
        vids.append(batch.video[i, v0 : v0 + lv])
        auds.append(batch.audio[i, a0 : a0 + la])
    pad = torch.nn.utils.rnn.pad_sequence
    lv = torch.tensor([len(v) for v in vids])
    la = torch.tensor([len(a) for a in auds])
    vm = torch.arange(int(lv.max()))[None] < lv[:, None]
    am = torch.arange(int(la.max()))[None] < la[:, None]
    return Batch(batch.clip_ids, batch.sources, pad(vids, batch_first=True), vm, pad(auds, batch_first=True), am)


def batch_stream(cfg: TrainConfig, state: TrainState, clip_ids: list[str], cache=None) -> Iterator[Batch]:
    """Endless batches from ``state``'s position (epoch, batch_in_epoch); ``cache``: the
    open FeatureCache of ``cfg.cache`` if the caller has it."""
    while True:
        loader = make_train_loader(
            cache if cache is not None else cfg.cache, cfg.split, cfg.batch_size, seed=cfg.seed, epoch=state.epoch,
            start_batch=state.batch_in_epoch, clip_ids=clip_ids, num_workers=cfg.num_workers,
        )
        it = iter(loader)
        while True:
            # DataLoader start-up draws from the global RNG: keep it out of the dropout stream.
            with torch.random.fork_rng(devices=[]):
                batch = next(it, None)
            if batch is None:
                break
            yield batch
        state.epoch += 1
        state.batch_in_epoch = 0


# -- validation ---------------------------------------------------------------


def recall_at_1(score: torch.Tensor) -> tuple[float, float]:
    """score (N, N), rows = video, cols = audio, pair i = (i, i), higher = closer.

    -> (V->A R@1, A->V R@1); a tie with a wrong item counts as a miss.
    """
    diag = score.diagonal()
    off = score.clone()
    off.fill_diagonal_(-math.inf)
    v2a = (diag > off.max(dim=1).values).double().mean().item()
    a2v = (diag > off.max(dim=0).values).double().mean().item()
    return v2a, a2v


@torch.no_grad()
def validate(model: SCAVModel, cfg: TrainConfig, val_ids: list[str], device: torch.device,
             cache=None) -> dict[str, float]:
    """R@1 both directions with aggregation (cosine of means) and sequence retrieval."""
    model.eval()
    vs, vms, as_, ams, ve, ae = [], [], [], [], [], []
    for b in iter_eval_batches(cache if cache is not None else cfg.cache, split=cfg.split, clip_ids=val_ids,
                               batch_size=64):
        b = b.to(device)
        out = model(b.video, b.video_mask, b.audio, b.audio_mask)
        for k in range(len(b)):
            vs.append(out["video_seq"][k, : int(out["video_mask"][k].sum())].float())
            as_.append(out["audio_seq"][k, : int(out["audio_mask"][k].sum())].float())
        ve.append(out["video_emb"].float())
        ae.append(out["audio_emb"].float())
    ve_n = torch.nn.functional.normalize(torch.cat(ve), dim=-1)
    ae_n = torch.nn.functional.normalize(torch.cat(ae), dim=-1)
    agg = recall_at_1(ve_n @ ae_n.T)
    pad = torch.nn.utils.rnn.pad_sequence
    v_seq, a_seq = pad(vs, batch_first=True), pad(as_, batch_first=True)
    v_mask = torch.arange(v_seq.shape[1], device=device)[None] < torch.tensor([len(x) for x in vs], device=device)[:, None]
    a_mask = torch.arange(a_seq.shape[1], device=device)[None] < torch.tensor([len(x) for x in as_], device=device)[:, None]
    rows = [
        sequence_distance(cfg.objective, v_seq[i : i + 64], v_mask[i : i + 64], a_seq, a_mask)
        for i in range(0, len(vs), 64)
    ]
    seq = recall_at_1(-torch.cat(rows))
    return {"agg_v2a_r1": agg[0], "agg_a2v_r1": agg[1], "seq_v2a_r1": seq[0], "seq_a2v_r1": seq[1]}


def selection_score(cfg: TrainConfig, val: dict[str, float]) -> float:
    """Mean R@1 of the retrieval method matching the objective."""
    m = "agg" if cfg.objective.kind == "cav" else "seq"
    return 0.5 * (val[f"{m}_v2a_r1"] + val[f"{m}_a2v_r1"])


# -- checkpoints ----------------------------------------------------------------


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _check_resume_config(saved: dict, cfg: TrainConfig) -> None:
    now = cfg.to_dict()
    diff = sorted(k for k in set(saved) | set(now) if k not in RESUME_MAY_DIFFER and saved.get(k) != now.get(k))
    if diff:
        raise ValueError(
            f"--resume: the run in {cfg.out} was started with other settings for {diff}; "
            "resume with the same options (see its config.json) or use another --out"
        )


class MetricsLog:
    """Appends JSON lines; on resume drops events after the checkpoint's step."""

    def __init__(self, path: Path, keep_until_step: int | None):
        self.path = path
        if keep_until_step is None:
            path.write_text("")
        elif path.exists():
            kept = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= keep_until_step]
            path.write_text("".join(ln + "\n" for ln in kept))

    def write(self, event: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(event) + "\n")


# -- the loop -------------------------------------------------------------------


def run(cfg: TrainConfig) -> dict:
    """Train according to ``cfg``; returns a summary dict (also logged)."""
    cfg.validate()
    import os

    device = resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    dist = ddp.init_distributed(device)
    # No torch.use_deterministic_algorithms: the CPU kernels used here are
    # deterministic already (tests/test_train_resume.py checks bit-equal losses)
    # and the call imports torch._inductor (~3 s).
    try:
        return _train(cfg, device, dist)
    finally:
        ddp.cleanup()


def _train(cfg: TrainConfig, device: torch.device, dist: ddp.DistInfo) -> dict:
    out = Path(cfg.out)
    cache = FeatureCache.open(cfg.cache)
    train_ids, val_ids = split_train_val(cache, cfg, dist.world_size)
    # Each rank trains on its own equal share of the clips (same epoch length everywhere).
    share = len(train_ids) // dist.world_size
    rank_ids = train_ids[dist.rank :: dist.world_size][:share]
    fps = {c.clip_id: (cache.meta.video.steps_per_second or c.fps or 1.0) for c in cache.clips(cfg.split)}

    resume = None
    if cfg.resume:
        resume = read_checkpoint(out / "last.pt", map_location="cpu")
        check_cache_matches(resume, cache.meta, f"the run in {out}")
        _check_resume_config(resume["config"], cfg)
    elif (out / "last.pt").exists():
        raise ValueError(f"{out} already holds a run (last.pt): pass --resume to continue it, or another --out")

    torch.manual_seed(cfg.seed)
    model = SCAVModel(cfg.model, cache.meta.video.dim, cache.meta.audio.dim, cfg.objective).to(device)
    n_params = model.num_trainable_parameters()
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2 and "rel_bias" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and not (p.ndim >= 2 and "rel_bias" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=cfg.betas,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
    state = TrainState()
    torch.manual_seed(cfg.seed + 7919 * (dist.rank + 1))  # dropout differs per rank
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        _set_rng_state(resume["rng"], device)
        state = TrainState(**resume["train_state"])
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        log.info("SCAV model: %s trainable parameters (%.1f M)", f"{n_params:,}", n_params / 1e6)
    metrics = MetricsLog(out / "metrics.jsonl", state.step if resume is not None else None) if dist.is_main else None
    net = model
    if dist.world_size > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def save_state(path: Path) -> None:
        extra = {
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": _rng_state(device),
            "train_state": dataclasses.asdict(state),
        }
        save_checkpoint(path, make_payload(model, cfg, cache.meta, state.step, **extra))

    from tqdm import tqdm

    bar = tqdm(total=cfg.steps, initial=state.step, disable=None if dist.is_main else True, dynamic_ncols=True)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    data = batch_stream(cfg, state, rank_ids, cache)
    t_last, steps_since = time.perf_counter(), 0
    while state.step < cfg.steps:
        batch = next(data).to(device, non_blocking=True)
        if cfg.random_crop is not None:
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + state.step * 101 + dist.rank)
            batch = random_crop(batch, [fps[c] for c in batch.clip_ids], cfg.random_crop, gen)
        model.train()
        with autocast:
            out_ = net(batch.video, batch.video_mask, batch.audio, batch.audio_mask)
        out_ = {k: v.float() if v.is_floating_point() else v for k, v in out_.items()}
        losses = compute_loss(out_, model, cfg.objective, dist)
        loss_value = ddp.all_reduce_mean(float(losses["loss"].detach()), device)
        if not math.isfinite(loss_value):
            _diverged(cfg, state.step + 1, losses, model, metrics, out)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        opt.step()
        sched.step()
        state.step += 1
        state.batch_in_epoch += 1
        state.last_loss = loss_value
        steps_since += 1
        bar.update(1)
        if state.step % cfg.log_every == 0 or state.step == cfg.steps:
            now = time.perf_counter()
            event = {"event": "train", "step": state.step, "epoch": state.epoch, "loss": loss_value,
                     **{k: float(v.detach()) for k, v in losses.items() if k.endswith("_loss")},
                     "lr": sched.get_last_lr()[0], "tau": math.exp(-float(model.logit_scale.detach())),
                     "lambda": math.exp(float(model.log_lambda.detach())), "steps_per_s": steps_since / max(now - t_last, 1e-9)}
            t_last, steps_since = now, 0
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{event['lr']:.2e}", it_s=f"{event['steps_per_s']:.1f}")
            if metrics:
                metrics.write(event)
        if state.step % cfg.val_every == 0 or state.step == cfg.steps:
            if dist.is_main:
                _validate_and_keep(model, cfg, val_ids, device, state, metrics, out, cache)
                save_state(out / "last.pt")
            ddp.barrier()
    bar.close()
    summary = {"out": str(out), "steps": state.step, "params": n_params, "final_loss": state.last_loss}
    if dist.is_main:
        summary.update(_finish(model, cfg, state, out, cache))
        log.info("training done: %s", json.dumps(summary))
    return summary


def _validate_and_keep(model, cfg, val_ids, device, state, metrics, out, cache) -> None:
    """Validate, and keep the step's weights if it is among the keep_best best."""
    if not val_ids:
        return
    val = validate(model, cfg, val_ids, device, cache)
    score = selection_score(cfg, val)
    metrics.write({"event": "val", "step": state.step, **val, "score": score})
    log.info("step %d validation: %s", state.step, json.dumps(val))
    if len(state.best) < cfg.keep_best or score > state.best[-1][0]:
        save_checkpoint(_step_path(out, state.step), make_payload(model, cfg, cache.meta, state.step))
        state.best.append([score, state.step])
        state.best.sort(key=lambda x: (-x[0], x[1]))
        for _, step in state.best[cfg.keep_best :]:
            _step_path(out, int(step)).unlink(missing_ok=True)
        del state.best[cfg.keep_best :]


def _step_path(out: Path, step: int) -> Path:
    return out / "ckpt" / f"step_{step:07d}.pt"


def _finish(model, cfg, state, out, cache) -> dict:
    """averaged.pt (mean of the best checkpoints, or the last weights) and curves.png."""
    if state.best:
        steps = [int(s) for _, s in state.best]
        avg, _ = average_state_dicts([_step_path(out, s) for s in steps])
    else:
        steps = [state.step]
        avg = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = make_payload(model, cfg, cache.meta, state.step, averaged_from=steps)
    payload["model"] = avg
    save_checkpoint(out / "averaged.pt", payload)
    from .plots import plot_curves

    plot_curves(out / "metrics.jsonl", out / "curves.png")
    return {"best": [{"step": int(s), "score": sc} for sc, s in state.best], "averaged_from": steps,
            "averaged": str(out / "averaged.pt")}


def _diverged(cfg, step, losses, model, metrics, out) -> None:
    values = {k: float(v.detach()) for k, v in losses.items() if v.numel() == 1}
    temps = {"tau": math.exp(-float(model.logit_scale.detach())), "lambda": math.exp(float(model.log_lambda.detach()))}
    if metrics:
        metrics.write({"event": "diverged", "step": step, **values, **temps})
    last = out / "last.pt"
    kept = f"last good checkpoint kept: {last}" if last.exists() else "no checkpoint was written yet"
    raise TrainingDiverged(f"non-finite loss at step {step}: {values}, temperatures {temps}; {kept}")
