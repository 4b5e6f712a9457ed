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

``--resume`` on a folder without last.pt (a run stopped before its first
checkpoint) starts the run from step 0 and logs so: nothing was saved that
could be continued, and a rerun from scratch is what that run would have done.
Temporaries left by writers killed inside a write are removed when a run starts.

The host reads the device only every ``log_every`` steps (and before a checkpoint):
a step queues its work and returns. The NaN guard still holds without a per-step
read: a non-finite loss or gradient skips the update on the device
(:class:`NonFiniteGuard`) and the next read stops the run naming that step, with
last.pt the last checkpoint before it.

Dub-augmented training (``cfg.dubs``, the dubs paper): the loader serves each clip with a
second audio track, :func:`scav.train.augment.make_quadruplets` cuts the primary and
secondary instances on the CPU (seeded by step and rank, as crops are), the model encodes
both in one forward (:func:`forward_pair`) and ``objective.compute_quad_loss`` contrasts
them. ``same_source_fraction`` makes batches with same-source hard negatives
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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scav.core.cache import FeatureCache
from scav.core.device import resolve_device
from scav.core.files import atomic_path, remove_stale_tmp
from scav.core.loader import Batch, iter_eval_batches, make_train_loader
from scav.model.checkpoint import (
    average_state_dicts,
    check_cache_matches,
    make_payload,
    read_checkpoint,
    save_checkpoint,
)
from scav.model.clip_lengths import pre_lengths
from scav.model.network import SCAVModel
from scav.model.objective import compute_loss, compute_quad_loss, sequence_distance
from scav.sequence.metrics import ranks_from_scores, recall_at

from . import ddp
from .augment import AUDIO_STEPS_PER_SECOND, QuadBatch, make_quadruplets, random_crop  # noqa: F401  (re-exported)
from .config import TrainConfig

log = logging.getLogger(__name__)

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


def batch_stream(cfg: TrainConfig, start: TrainState, clip_ids: list[str], cache=None) -> Iterator[tuple[int, int, Batch]]:
    """Endless ``(epoch, index in epoch, batch)`` from ``start``'s position (epoch,
    batch_in_epoch); ``cache``: the open FeatureCache of ``cfg.cache`` if the caller has it.

    The position travels with each batch instead of being written into the state here:
    the batch feed reads a batch ahead of the step that trains on it (:class:`BatchFeed`),
    and the state must name the batches trained on, not the ones read.
    """
    epoch, first = start.epoch, start.batch_in_epoch
    while True:
        loader = make_train_loader(
            cache if cache is not None else cfg.cache, cfg.split, cfg.batch_size, seed=cfg.seed, epoch=epoch,
            start_batch=first, clip_ids=clip_ids, num_workers=cfg.num_workers, track=cfg.audio_track,
            same_source_fraction=cfg.same_source_fraction, second_track=cfg.dubs.second_track(),
        )
        it = iter(loader)
        index = first
        while True:
            # DataLoader start-up draws from the global RNG: keep it out of the dropout stream.
            with torch.random.fork_rng(devices=[]):
                batch = next(it, None)
            if batch is None:
                break
            yield epoch, index, batch
            index += 1
        epoch, first = epoch + 1, 0


class BatchFeed:
    """The batches of the coming steps, on the device.

    A batch is cropped (when asked) on the CPU, before the copy: on a GPU the crop's
    per-clip lengths would each be a host sync. On CUDA the next batch is also cropped
    and copied into pinned memory by a helper thread while the current step runs, so its
    copy to the GPU is asynchronous and the step does not wait for the host.
    Reading from the loader stays on this thread (``batch_stream`` forks the global RNG).
    """

    def __init__(self, t: "Training", ahead: bool | None = None):
        """``ahead``: prepare the next batch in a helper thread (default: on CUDA)."""
        self.t = t
        self.data = batch_stream(t.cfg, t.state, t.rank_ids, t.cache)
        self.pin = t.device.type == "cuda"
        self.pool = None
        if t.device.type == "cuda" if ahead is None else ahead:
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(1, thread_name_prefix="scav-feed")
        self.ahead = None  # future of the next step's prepared batch

    def _prepare(self, batch: Batch, step: int) -> "Batch | QuadBatch":
        """Crop or cut into quadruplets (CPU), and pin, the batch trained at ``step`` (the
        state's step before it)."""
        t = self.t
        # seeded by step and rank: a resumed run crops as the uninterrupted one did
        gen = torch.Generator().manual_seed(t.cfg.seed * 1_000_003 + step * 101 + t.dist.rank)
        fps = [t.fps[c] for c in batch.clip_ids]
        dubs = t.cfg.dubs
        if dubs.enabled:
            batch = make_quadruplets(batch, fps, dubs.window, gen, same_window=not dubs.uses_jitter(t.cfg.objective),
                                     mask_fraction=dubs.mask_fraction)
        elif t.cfg.random_crop is not None:
            batch = random_crop(batch, fps, t.cfg.random_crop, gen)
        return batch.pin_memory() if self.pin else batch

    def next(self) -> tuple[int, int, Batch]:
        """-> (epoch, index in epoch, batch on the device) for step ``state.step + 1``."""
        step = self.t.state.step
        if self.pool is None:
            epoch, index, batch = next(self.data)
            batch = self._prepare(batch, step)
        else:
            current = self.ahead if self.ahead is not None else self._submit(step)
            self.ahead = self._submit(step + 1)
            epoch, index, batch = current.result()
        return epoch, index, batch.to(self.t.device, non_blocking=True)

    def _submit(self, step: int):
        epoch, index, batch = next(self.data)
        return self.pool.submit(lambda: (epoch, index, self._prepare(batch, step)))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        self.data.close()


# -- validation ---------------------------------------------------------------


def recall_at_1_both_ways(score: torch.Tensor) -> tuple[float, float]:
    """score (N, N), rows = video, cols = audio, pair i = (i, i), higher = closer.

    -> (V->A R@1, A->V R@1) as fractions in [0, 1]. Ranks come from
    ``scav.sequence.metrics`` (the retrieval stage's): a tie is broken by
    candidate index, so validation and retrieval agree on every matrix.
    """
    v2a = recall_at(ranks_from_scores(score), 1) / 100.0
    a2v = recall_at(ranks_from_scores(score.T), 1) / 100.0
    return v2a, a2v


@torch.no_grad()
def validate(model: SCAVModel, cfg: TrainConfig, val_ids: list[str], device: torch.device,
             cache=None) -> dict[str, float]:
    """R@1 both directions with aggregation (cosine of means) and sequence retrieval.

    Clips are encoded as retrieval encodes them: with interp='pre' each clip's resampled
    side takes a length of its own (``pre_lengths``), not its partner's, so validation
    selects checkpoints on the representation that retrieval ranks with.
    """
    model.eval()
    cache = cache if cache is not None else FeatureCache.open(cfg.cache)
    info = {c.clip_id: c for c in cache.clips(cfg.split)}
    vs, as_, ve, ae = [], [], [], []
    for b in iter_eval_batches(cache, split=cfg.split, clip_ids=val_ids, batch_size=64, track=cfg.audio_track):
        pre = pre_lengths([info[i] for i in b.clip_ids], cfg.objective, cache.meta)
        b = b.to(device)
        own = None if pre is None else torch.from_numpy(pre).to(device)
        out = model(b.video, b.video_mask, b.audio, b.audio_mask, pre_lengths=own)
        lv, la = out["video_mask"].sum(1).tolist(), out["audio_mask"].sum(1).tolist()  # one sync per batch
        for k in range(len(b)):
            vs.append(out["video_seq"][k, : lv[k]].float())
            as_.append(out["audio_seq"][k, : la[k]].float())
        ve.append(out["video_emb"].float())
        ae.append(out["audio_emb"].float())
    ve_n = torch.nn.functional.normalize(torch.cat(ve), dim=-1)
    ae_n = torch.nn.functional.normalize(torch.cat(ae), dim=-1)
    agg = recall_at_1_both_ways(ve_n @ ae_n.T)
    pad = torch.nn.utils.rnn.pad_sequence
    v_seq, a_seq = pad(vs, batch_first=True), pad(as_, batch_first=True)
    v_mask = torch.arange(v_seq.shape[1], device=device)[None] < torch.tensor([len(x) for x in vs], device=device)[:, None]
    a_mask = torch.arange(a_seq.shape[1], device=device)[None] < torch.tensor([len(x) for x in as_], device=device)[:, None]
    rows = [
        sequence_distance(cfg.objective, v_seq[i : i + 64], v_mask[i : i + 64], a_seq, a_mask)
        for i in range(0, len(vs), 64)
    ]
    seq = recall_at_1_both_ways(-torch.cat(rows))
    return {"agg_v2a_r1": agg[0], "agg_a2v_r1": agg[1], "seq_v2a_r1": seq[0], "seq_a2v_r1": seq[1]}


def selection_score(cfg: TrainConfig, val: dict[str, float]) -> float:
    """Mean R@1 of the retrieval method matching the objective."""
    m = "agg" if cfg.objective.kind == "cav" else "seq"
    return 0.5 * (val[f"{m}_v2a_r1"] + val[f"{m}_a2v_r1"])


# -- optimizer ------------------------------------------------------------------


def _decays(name: str, p: torch.nn.Parameter) -> bool:
    """Weight decay on weight matrices only: not on biases, norms, temperatures
    or the relative-position bias tables (an embedding of per-head offsets)."""
    return p.ndim >= 2 and "rel_bias" not in name


def make_optimizer(model: SCAVModel, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with two parameter groups: decayed matrices, then everything else (order is
    part of the optimizer's state_dict, so it must not change between a run and its resume).

    Fused (one kernel per step on a GPU, CPU too): it is also the implementation that takes
    a device-side ``found_inf`` flag and then leaves weights and moments untouched, which is
    how the NaN guard skips a step without reading the loss on the host (:func:`train_step`).
    """
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in params if _decays(n, p)], "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in params if not _decays(n, p)], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=True)


OPTIMIZER_IMPL = ("fused", "foreach", "capturable")


def load_optimizer_state(opt: torch.optim.Optimizer, saved: dict) -> None:
    """``opt.load_state_dict(saved)`` keeping ``opt``'s implementation (fused): torch takes
    it from the saved groups, and a last.pt written before the optimizer was fused would
    otherwise turn the guard's device-side skip off."""
    impl = [{k: g[k] for k in OPTIMIZER_IMPL if k in g} for g in opt.param_groups]
    opt.load_state_dict(saved)
    for group, keep in zip(opt.param_groups, impl):
        group.update(keep)
        if group.get("fused") or group.get("capturable"):
            for p in group["params"]:  # fused kernels keep the step count on the parameter's device
                st = opt.state.get(p, {})
                if torch.is_tensor(st.get("step")):
                    st["step"] = st["step"].to(p.device, torch.float32)


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))


# -- run folder, resume state -------------------------------------------------------


RUN_FILES = ("last.pt", "averaged.pt", "config.json", "curves.png")  # written through atomic_path


def remove_stale_run_tmp(out: Path) -> list[Path]:
    """Remove temporaries a writer killed inside a write left in run folder ``out``
    (``.last.tmp-<pid>.pt``, ``ckpt/.step_0001000.tmp-<pid>.pt``, ...); those of live
    processes are kept. A checkpoint step that is never written again would otherwise
    keep its temporary for ever."""
    removed = [p for name in RUN_FILES for p in remove_stale_tmp(out / name)]
    for tmp in sorted((out / "ckpt").glob(".step_*.tmp-*.pt")):
        removed += remove_stale_tmp(tmp.with_name(tmp.name[1:].split(".tmp-")[0] + ".pt"))
    return removed


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
    """Refuse to continue a run with other settings (``saved``: its config dict, of any release)."""
    saved = TrainConfig.from_dict(saved).to_dict()  # normalised (tuples, defaults); unknown fields refused
    now = cfg.to_dict()
    diff = sorted(k for k in set(saved) | set(now) if k not in RESUME_MAY_DIFFER and saved.get(k) != now.get(k))
    if diff:
        raise ValueError(
            f"--resume: the run in {cfg.out} was started with other settings for {diff}; "
            "resume with the same options (see its config.json) or use another --out"
        )


def read_resume_point(cfg: TrainConfig, out: Path, cache: FeatureCache) -> dict[str, Any] | None:
    """The last.pt to continue from, or None to start at step 0.

    With --resume and no last.pt (killed before its first checkpoint) the run
    starts again from step 0, if the folder's config.json (when there is one)
    agrees with ``cfg``; without --resume an existing last.pt is refused.
    """
    last = out / "last.pt"
    if not cfg.resume:
        if last.exists():
            raise ValueError(f"{out} already holds a run (last.pt): pass --resume to continue it, or another --out")
        return None
    if not last.exists():
        saved = out / "config.json"
        if saved.is_file():
            _check_resume_config(json.loads(saved.read_text()), cfg)
        log.warning("--resume: %s holds no last.pt (the run stopped before its first checkpoint, written at step "
                    "%d): starting it from step 0", out, min(cfg.val_every, cfg.steps))
        return None
    resume = read_checkpoint(last, map_location="cpu")
    check_cache_matches(resume, cache.meta, f"the run in {out}")
    _check_resume_config(resume["config"], cfg)
    return resume


def restore_state(resume: dict[str, Any], model: SCAVModel, opt, sched, device: torch.device) -> TrainState:
    """Load weights, optimizer, scheduler and RNG from a last.pt; -> its TrainState."""
    model.load_state_dict(resume["model"])
    load_optimizer_state(opt, resume["optimizer"])
    sched.load_state_dict(resume["scheduler"])
    _set_rng_state(resume["rng"], device)
    return TrainState(**resume["train_state"])


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


def prepare_run_folder(cfg: TrainConfig, out: Path, resumed_at: int | None) -> MetricsLog:
    """Create ``out``, clear dead writers' temporaries, write config.json; -> the metrics log
    (kept up to ``resumed_at``, emptied when None)."""
    out.mkdir(parents=True, exist_ok=True)
    removed = remove_stale_run_tmp(out)
    if removed:
        log.info("removed %d temporary file(s) left by killed writers in %s", len(removed), out)
    with atomic_path(out / "config.json") as tmp:
        tmp.write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    return MetricsLog(out / "metrics.jsonl", resumed_at)


# -- the loop -------------------------------------------------------------------


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
    guard: "NonFiniteGuard"

    def save_last(self) -> None:
        """last.pt: weights plus everything --resume needs to continue exactly."""
        extra = {"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                 "rng": _rng_state(self.device), "train_state": dataclasses.asdict(self.state)}
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
        summary.update(_finish(t))
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
                    NonFiniteGuard(opt, device))


def _due(step: int, every: int, last: int) -> bool:
    return step % every == 0 or step == last


class NonFiniteGuard:
    """The NaN guard, without a host sync per step.

    Each step raises, on the device, a sticky flag when its loss or a gradient is not
    finite (max-reduced over ranks, so all agree). The fused AdamW reads the flag
    (``optimizer.found_inf``, as ``torch.amp.GradScaler`` uses it) and skips the update,
    moments and step count included: from the first bad step on, the weights stay those
    after the last good step. The steps' scalars wait on the device (:meth:`record`) until
    the host reads them at once (:meth:`read`), every ``log_every`` steps and before any
    checkpoint is written; that read names the first bad step and the run stops there.
    """

    def __init__(self, opt: torch.optim.Optimizer, device: torch.device):
        self.flag = torch.zeros((), device=device)  # 1.0 from the first non-finite step on
        self._one = torch.ones((), device=device)
        opt.found_inf = self.flag
        self.names: list[str] = []
        self.rows: list[torch.Tensor] = []  # per step: (flag, loss finite, scalars...)
        self.first_step = 0  # the step of rows[0]

    def check(self, loss: torch.Tensor, params) -> torch.Tensor:
        """After backward: raise the flag if ``loss`` or a gradient of ``params`` is not
        finite. -> this rank's loss-is-finite (0-dim float)."""
        loss_ok = torch.isfinite(loss.detach()).float()
        torch.maximum(self.flag, 1.0 - loss_ok, out=self.flag)
        grads: dict[tuple, list[torch.Tensor]] = {}
        for p in params:
            if p.grad is not None:
                grads.setdefault((p.grad.device, p.grad.dtype), []).append(p.grad)
        for gs in grads.values():  # sets the flag on inf/NaN; the scale of 1 leaves the grads as they are
            torch._amp_foreach_non_finite_check_and_unscale_(gs, self.flag, self._one)
        ddp.all_reduce_max_(self.flag)
        return loss_ok

    def record(self, step: int, losses: dict[str, torch.Tensor], loss_ok: torch.Tensor) -> None:
        scalars = {k: v.detach().float().reshape(()) for k, v in losses.items() if v.numel() == 1}
        if not self.rows:
            self.names, self.first_step = list(scalars), step
        self.rows.append(torch.stack([self.flag, loss_ok, *scalars.values()]))

    def read(self) -> tuple[int, dict[str, float], bool, bool] | None:
        """The host read: -> (step, its scalars averaged over ranks, flagged, loss finite on
        every rank) of the first flagged step if there is one, else of the latest step;
        None if no step waits. Every rank calls it at the same steps (a collective with DDP)."""
        if not self.rows:
            return None
        rows = ddp.all_reduce_mean_(torch.stack(self.rows).double()).cpu()  # (n, 2 + K)
        first, self.rows = self.first_step, []
        bad = torch.nonzero(rows[:, 0] > 0)
        k = int(bad[0, 0]) if len(bad) else len(rows) - 1
        values = dict(zip(self.names, rows[k, 2:].tolist()))
        return first + k, values, bool(len(bad)), bool(rows[k, 1] == 1.0)


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


def _cat_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Two padded batches (B, T1, ...) and (B, T2, ...) -> (2B, max T, ...), zero/False padded."""
    t = max(a.shape[1], b.shape[1])

    def pad(x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == t:
            return x
        widths = [0, 0] * (x.dim() - 2) + [0, t - x.shape[1]]
        return torch.nn.functional.pad(x, widths)

    return torch.cat([pad(a), pad(b)])


def forward_pair(net, primary: Batch, secondary: Batch) -> tuple[dict, dict]:
    """The model on both instances of a quadruplet batch in ONE forward (one kernel launch per
    layer, and DDP sees a single forward per step) -> (primary outputs, secondary outputs).
    Padding beyond a clip's length is masked everywhere, so a clip's latents do not depend on
    the other half's lengths."""
    n = len(primary)
    out = net(_cat_padded(primary.video, secondary.video), _cat_padded(primary.video_mask, secondary.video_mask),
              _cat_padded(primary.audio, secondary.audio), _cat_padded(primary.audio_mask, secondary.audio_mask))
    halves = ({}, {})
    for k, v in out.items():
        for h, part in zip(halves, (v[:n], v[n:]) if v.dim() and v.shape[0] == 2 * n else (v, v)):
            h[k] = part
    return halves


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


def log_train_step(t: Training, values: dict[str, float], steps_per_s: float, bar) -> None:
    """A train event (the step's losses, lr, temperatures, speed) to metrics.jsonl and the progress bar."""
    model, loss = t.model, values["loss"]
    event = {"event": "train", "step": t.state.step, "epoch": t.state.epoch, "loss": loss,
             **{k: v for k, v in values.items() if k.endswith("_loss") or "within_" in k},
             "lr": t.sched.get_last_lr()[0], "tau": math.exp(-float(model.logit_scale.detach())),
             "lambda": math.exp(float(model.log_lambda.detach())), "steps_per_s": steps_per_s}
    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{event['lr']:.2e}", it_s=f"{steps_per_s:.1f}")
    if t.metrics:
        t.metrics.write(event)


def validate_and_checkpoint(t: Training) -> None:
    """Main rank: validate, keep the step if among the best, write last.pt; the others wait."""
    if t.dist.is_main:
        _validate_and_keep(t)
        t.save_last()
    ddp.barrier()


def _validate_and_keep(t: Training) -> None:
    """Validate, and keep the step's weights if it is among the keep_best best."""
    if not t.val_ids:
        return
    cfg, state = t.cfg, t.state
    val = validate(t.model, cfg, t.val_ids, t.device, t.cache)
    score = selection_score(cfg, val)
    t.metrics.write({"event": "val", "step": state.step, **val, "score": score})
    log.info("step %d validation: %s", state.step, json.dumps(val))
    if len(state.best) < cfg.keep_best or score > state.best[-1][0]:
        save_checkpoint(_step_path(t.out, state.step), make_payload(t.model, cfg, t.cache.meta, state.step))
        state.best.append([score, state.step])
        state.best.sort(key=lambda x: (-x[0], x[1]))
        for _, step in state.best[cfg.keep_best :]:
            _step_path(t.out, int(step)).unlink(missing_ok=True)
        del state.best[cfg.keep_best :]


def _step_path(out: Path, step: int) -> Path:
    return out / "ckpt" / f"step_{step:07d}.pt"


def _finish(t: Training) -> dict:
    """averaged.pt (mean of the best checkpoints, or the last weights) and curves.png."""
    state, out = t.state, t.out
    if state.best:
        steps = [int(s) for _, s in state.best]
        avg, _ = average_state_dicts([_step_path(out, s) for s in steps])
    else:
        steps = [state.step]
        avg = {k: v.detach().cpu() for k, v in t.model.state_dict().items()}
    payload = make_payload(t.model, t.cfg, t.cache.meta, state.step, averaged_from=steps)
    payload["model"] = avg
    save_checkpoint(out / "averaged.pt", payload)
    from .plots import plot_curves

    plot_curves(out / "metrics.jsonl", out / "curves.png")
    return {"best": [{"step": int(s), "score": sc} for sc, s in state.best], "averaged_from": steps,
            "averaged": str(out / "averaged.pt")}


def _diverged(t: Training, step: int, values: dict[str, float], what: str) -> None:
    """Stop the run at ``step``, the first with a non-finite ``what`` ('loss' or 'gradient').
    The temperatures named are the model's now: those of the last good step (the guard
    skipped every update since)."""
    model = t.model
    temps = {"tau": math.exp(-float(model.logit_scale.detach())), "lambda": math.exp(float(model.log_lambda.detach()))}
    if t.metrics:
        t.metrics.write({"event": "diverged", "step": step, "non_finite": what, **values, **temps})
    last = t.out / "last.pt"
    kept = f"last good checkpoint kept: {last}" if last.exists() else "no checkpoint was written yet"
    raise TrainingDiverged(f"non-finite {what} at step {step}: {values}, temperatures {temps}; {kept}")
