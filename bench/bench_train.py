"""Training speed and memory of the SCAV model: steps/s and the largest batch that fits.

    python bench/bench_train.py --device cuda                 # paper model, ~2-3 min on one H200
    python bench/bench_train.py --device cpu                  # a smaller model (CPU)
    python bench/bench_train.py --quick --device cpu          # smoke run, ~30 s

Figures (each with its same-run ceiling):
  steps/s on device fp32 / bf16   ``scav.train.loop.train_step`` on batches already on the
                                  device (no loader), host read every ``log_every`` steps
                                  as in a run; also as TFLOP/s (FlopCounterMode count of one
                                  step) against the device's measured matmul rate.
  steps/s from the cache          ``scav.train.loop.run`` on a synthetic cache of paper-shaped
                                  float16 features (the real loader, its worker processes
                                  ``--workers``), the mean of its logged rates after the first
                                  window; ratio to on-device at the same batch and precision.
  max batch (Table I)             per configuration, the largest batch (multiple of 8) whose
                                  full training step (model + loss + AdamW) fits ``--budget-gb``:
                                  peak memory measured at three batch sizes, a quadratic in B
                                  fitted through them (activations are linear in B, the loss's
                                  pairwise terms quadratic), solved for the budget and, on CUDA,
                                  confirmed by running that batch (stepping down if it does not
                                  fit). Peak: ``torch.cuda.max_memory_allocated`` on CUDA; on
                                  CPU an estimate, the bytes of the tensors autograd saves for
                                  backward plus parameters, gradients, AdamW moments and the
                                  batch (``saved_tensors_hooks``; transient buffers not counted).

Paper model: c=512, 8 video / 2 audio blocks, 768-d CLIP and 6144-d BEATs inputs (39.3 M
trainable parameters); clips of 250 video / 62 audio steps; batch 32. Table I's max BS were
measured on a V100-32GB.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from scav.core.cache import CacheWriter, ClipRecord, new_meta
from scav.core.device import resolve_device
from scav.core.loader import Batch, make_train_loader
from scav.core.schema import AudioTrack, ClipInfo, EncoderInfo
from scav.model.network import SCAVModel
from scav.model.objective import compute_loss
from scav.train import ddp, loop
from scav.train.guard import NonFiniteGuard
from scav.train.schedule import make_optimizer
from scav.model.config import ModelConfig, ObjectiveConfig
from scav.train.config import TrainConfig

GB = 1024**3
# Table I (V100-32GB): the paper's max batch per configuration.
TABLE_I = {
    "cav": (ObjectiveConfig(kind="cav", interp="post"), 192),
    "eucl_pre_v2a": (ObjectiveConfig(interp="pre", resample="video"), 256),
    "eucl_pre_a2v": (ObjectiveConfig(interp="pre", resample="audio"), 64),
    "eucl_post_v2a": (ObjectiveConfig(interp="post", resample="video"), 96),
    "eucl_post_a2v": (ObjectiveConfig(interp="post", resample="audio"), 64),
    "soft_dtw": (ObjectiveConfig(distance="soft_dtw", interp="post"), 64),
    "wasserstein": (ObjectiveConfig(distance="wasserstein", interp="post"), 64),
}
PAPER_MODEL = ModelConfig()
CPU_MODEL = ModelConfig(c=128, video_layers=2, audio_layers=1, heads=4, video_mlp_hidden=512, audio_mlp_hidden=256)
QUICK_MODEL = ModelConfig(c=32, video_layers=1, audio_layers=1, heads=2, video_mlp_hidden=64, audio_mlp_hidden=64)


@dataclasses.dataclass
class Sizes:
    model: ModelConfig
    video_steps: int = 250
    audio_steps: int = 62
    video_dim: int = 768
    audio_dim: int = 6144
    batch: int = 32
    steps: int = 100  # timed steps per on-device figure
    log_every: int = 50
    loader_steps: int = 150  # steps of each run() from the cache
    cache_clips: int = 384
    big_batch: int = 256  # the data-path figure at a large batch too (0: skip)
    budget_gb: float = 32.0
    trial_time_s: float = 20.0  # a max-batch confirmation predicted slower than this is not run
    workers: int = 0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_tflops(device: torch.device, dtype: torch.dtype, n: int) -> float:
    """The device's dense matmul rate, n x n x n, measured now."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    reps = 20 if device.type == "cuda" else 3
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


# -- synthetic data ---------------------------------------------------------------


def write_cache(path: Path, n: int, s: Sizes) -> Path:
    """``n`` paper-shaped clips of random float16 features (lengths 0.9-1.1 x the mean)."""
    rng = np.random.default_rng(0)
    pool_v = rng.standard_normal((s.video_steps * 8, s.video_dim), dtype=np.float32).astype(np.float16)
    pool_a = rng.standard_normal((s.audio_steps * 8, s.audio_dim), dtype=np.float32).astype(np.float16)
    meta = new_meta(EncoderInfo("bench-video", s.video_dim, stand_in=True),
                    EncoderInfo("bench-audio", s.audio_dim, stand_in=True, steps_per_second=6.25))
    w = CacheWriter.create_or_open(path, meta)
    recs = []
    for i in range(n):
        t = int(rng.integers(round(s.video_steps * 0.9), round(s.video_steps * 1.1) + 1))
        a = int(rng.integers(round(s.audio_steps * 0.9), round(s.audio_steps * 1.1) + 1))
        ov, oa = int(rng.integers(0, len(pool_v) - t)), int(rng.integers(0, len(pool_a) - a))
        info = ClipInfo(f"clip{i:06d}", "train", source=f"src{i // 10}", fps=25.0, duration=t / 25.0, n_video=t,
                        tracks=[AudioTrack(0, None, a)])
        recs.append(ClipRecord(info, pool_v[ov : ov + t], np.arange(t) / 25.0, [pool_a[oa : oa + a]]))
        if len(recs) == 256 or i == n - 1:
            w.write_part(recs)
            recs = []
    return path


def full_batch(s: Sizes, b: int, device: torch.device, seed: int = 0) -> Batch:
    """A batch of full-length clips (the memory worst case), float32 on ``device``."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(b, s.video_steps, s.video_dim, generator=g)
    a = torch.randn(b, s.audio_steps, s.audio_dim, generator=g)
    vm = torch.ones(b, s.video_steps, dtype=torch.bool)
    am = torch.ones(b, s.audio_steps, dtype=torch.bool)
    return Batch([f"c{i}" for i in range(b)], [""] * b, v, vm, a, am).to(device)


# -- steps/s ---------------------------------------------------------------------


def _cfg(cache: Path, out: Path, s: Sizes, device: torch.device, precision: str, batch: int,
         objective: ObjectiveConfig = ObjectiveConfig(), **kw) -> TrainConfig:
    base = dict(cache=str(cache), out=str(out), val_clips=batch, val_every=10**9, steps=s.steps, batch_size=batch,
                warmup_steps=10, log_every=s.log_every, precision=precision, device=str(device),
                num_workers=s.workers, model=s.model, objective=objective, keep_best=1)
    base.update(kw)
    return TrainConfig(**base)


def on_device_rate(cache: Path, work: Path, s: Sizes, device: torch.device, precision: str, batch: int) -> dict:
    """train_step on batches already on the device (read from the cache once)."""
    cfg = _cfg(cache, work / f"dev-{precision}-{batch}", s, device, precision, batch)
    t = loop.setup(cfg, device, ddp.DistInfo())
    loader = make_train_loader(t.cache, cfg.split, batch, seed=0, clip_ids=t.rank_ids)
    batches = [b.to(device) for _, b in zip(range(4), loader)]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    flops = step_flops(t, batches[0], autocast)

    def steps(n: int) -> None:
        for i in range(n):
            loop.train_step(t, (0, i, batches[i % len(batches)]), autocast)
            if (i + 1) % s.log_every == 0 or i + 1 == n:
                loop.read_losses(t)

    steps(min(10, s.steps))  # warm-up: allocator, kernels, optimizer state
    sync(device)
    t0 = time.perf_counter()
    steps(s.steps)
    sync(device)
    rate = s.steps / (time.perf_counter() - t0)
    return {"steps_per_s": rate, "step_tflop": flops / 1e12, "tflops": flops * rate / 1e12,
            "params": t.model.num_trainable_parameters()}


def step_flops(t, batch: Batch, autocast) -> float:
    """FLOPs of one training step (forward + backward) by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        with autocast:
            out = t.model(batch.video, batch.video_mask, batch.audio, batch.audio_mask)
        out = {k: v.float() if v.is_floating_point() else v for k, v in out.items()}
        compute_loss(out, t.model, t.cfg.objective)["loss"].backward()
    t.opt.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def from_cache_rate(cache: Path, work: Path, s: Sizes, device: torch.device, precision: str, batch: int) -> dict:
    """scav.train.loop.run from the cache; the mean logged rate after the first window."""
    out = work / f"run-{precision}-{batch}"
    cfg = _cfg(cache, out, s, device, precision, batch, steps=s.loader_steps, log_every=s.log_every)
    loop.run(cfg)
    rates = [e["steps_per_s"] for e in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
             if e["event"] == "train"][1:]
    return {"steps_per_s": float(np.mean(rates)) if rates else float("nan")}


# -- max batch -------------------------------------------------------------------------


def peak_bytes(model, opt, guard, objective, s: Sizes, b: int, device: torch.device, autocast) -> tuple[float, float]:
    """-> (peak bytes of one full training step at batch ``b``, its seconds)."""
    batch = full_batch(s, b, device, seed=b)
    model.train()
    saved: dict[int, int] = {}

    def pack(x):
        try:
            saved.setdefault(x.untyped_storage().data_ptr(), x.untyped_storage().nbytes())
        except (RuntimeError, NotImplementedError):
            pass
        return x

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t0 = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        with autocast:
            out = model(batch.video, batch.video_mask, batch.audio, batch.audio_mask)
        out = {k: v.float() if v.is_floating_point() else v for k, v in out.items()}
        losses = compute_loss(out, model, objective)
    opt.zero_grad(set_to_none=True)
    losses["loss"].backward()
    guard.check(losses["loss"], model.parameters())
    opt.step()
    sync(device)
    secs = time.perf_counter() - t0
    if device.type == "cuda":
        return float(torch.cuda.max_memory_allocated(device)), secs
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    inputs = sum(x.numel() * x.element_size() for x in (batch.video, batch.audio))
    return float(sum(saved.values()) + 4 * params + inputs), secs


def max_batch(name: str, s: Sizes, device: torch.device, precision: str) -> dict:
    """Largest multiple of 8 whose full training step fits ``s.budget_gb`` (module docstring)."""
    objective, paper = TABLE_I[name]
    torch.manual_seed(0)
    model = SCAVModel(s.model, s.video_dim, s.audio_dim, objective).to(device)
    cfg = TrainConfig(cache="-", out="-", model=s.model, objective=objective)
    opt = make_optimizer(model, cfg)
    guard = NonFiniteGuard(opt, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    budget = s.budget_gb * GB

    def measure(b: int):
        try:
            return peak_bytes(model, opt, guard, objective, s, b, device, autocast)
        except torch.OutOfMemoryError:
            return math.inf, math.inf
        finally:
            opt.zero_grad(set_to_none=True)

    b0 = max(8, s.batch // 2)
    probes = [b0, 2 * b0, 4 * b0]
    measure(b0)  # warm-up: AdamW moments allocated, kernels chosen
    pts = [(b, *measure(b)) for b in probes]
    if any(not math.isfinite(m) for _, m, _ in pts):
        return {"config": name, "paper": paper, "max_batch": f"< {probes[-1]}", "how": "out of memory while probing"}
    x = np.array([p[0] for p in pts], dtype=float)
    coef = np.polyfit(x, np.array([p[1] for p in pts]), 2)  # peak = c2 B^2 + c1 B + c0
    roots = [r.real for r in np.roots(coef - np.array([0, 0, budget])) if abs(r.imag) < 1e-9 and r.real > 0]
    pred = int(min(roots) // 8 * 8) if roots else probes[-1]
    t_fit = np.polyfit(x, np.array([p[2] for p in pts]), 2)
    pred_secs = float(np.polyval(t_fit, pred))
    row = {"config": name, "paper": paper, "precision": precision, "probes": [[int(b), m / GB, t] for b, m, t in pts],
           "predicted": pred, "predicted_step_s": pred_secs}
    if device.type != "cuda":
        return {**row, "max_batch": pred, "how": "estimate (saved tensors + weights/grads/moments), fit"}
    if pred_secs > s.trial_time_s:
        return {**row, "max_batch": pred, "how": f"fit only: a step at B={pred} would take ~{pred_secs:.0f} s"}
    b = pred
    while b > 8:
        peak, secs = measure(b)
        if peak <= budget:
            return {**row, "max_batch": b, "how": f"measured: {peak / GB:.1f} GB at B={b}, step {secs:.2f} s"}
        b -= 8
    return {**row, "max_batch": 0, "how": "nothing fits"}


# -- driver -------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--quick", action="store_true", help="tiny model, a few steps: a smoke run (~30 s on CPU)")
    ap.add_argument("--budget-gb", type=float, default=None, help="max-batch budget (default 32; --quick: 0.25)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=None, help="timed steps per on-device figure")
    ap.add_argument("--big-batch", type=int, default=None, help="the data path at this batch too (0: skip)")
    ap.add_argument("--workers", type=int, default=None, help="loader worker processes (default: 4 on CUDA, 0 on CPU)")
    ap.add_argument("--configs", default=None, help="Table I configurations for the max batch, comma-separated "
                    "(default: all; --quick: cav,eucl_pre_v2a, the others printed as skipped)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--json", default=None, help="write the figures here (rewritten after each figure)")
    ap.add_argument("--time-budget-s", type=float, default=None,
                    help="start no max-batch search after this many seconds (the rest print as skipped)")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = device.type == "cuda"
    if args.quick:
        s = Sizes(QUICK_MODEL, video_steps=40, audio_steps=10, video_dim=64, audio_dim=256, batch=8, steps=10,
                  log_every=5, loader_steps=15, cache_clips=48, big_batch=0, budget_gb=0.25)
    elif cuda:
        s = Sizes(PAPER_MODEL, batch=args.batch)
    else:
        s = Sizes(CPU_MODEL, batch=args.batch, steps=10, log_every=5, loader_steps=20, cache_clips=96, big_batch=0,
                  video_steps=250, audio_steps=62)
    s.budget_gb = args.budget_gb if args.budget_gb is not None else s.budget_gb
    s.steps = args.steps or s.steps
    s.big_batch = args.big_batch if args.big_batch is not None else s.big_batch
    s.workers = args.workers if args.workers is not None else (4 if cuda else 0)
    s.cache_clips = max(s.cache_clips, 3 * max(s.batch, s.big_batch))
    default = "cav,eucl_pre_v2a" if args.quick else ",".join(TABLE_I)
    configs = [c for c in (args.configs if args.configs is not None else default).split(",") if c]

    print(f"# bench_train device={device} torch={torch.__version__} threads={torch.get_num_threads()} "
          f"{json.dumps(dataclasses.asdict(s))}", flush=True)
    fig: dict = {"device": str(device), "sizes": dataclasses.asdict(s)}

    def save() -> None:  # after each figure: a run stopped by a time limit keeps what it measured
        if args.json:
            Path(args.json).write_text(json.dumps(fig, indent=2) + "\n")

    fig["matmul_tflops"] = {"fp32": matmul_tflops(device, torch.float32, 4096 if cuda else 1024),
                            "bf16": matmul_tflops(device, torch.bfloat16, 8192 if cuda else 1024)}
    print(f"ceiling: matmul fp32 {fig['matmul_tflops']['fp32']:.2f} TFLOP/s, "
          f"bf16 {fig['matmul_tflops']['bf16']:.2f} TFLOP/s", flush=True)

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        cache = write_cache(work / "bench.zarr", s.cache_clips, s)
        print(f"cache: {s.cache_clips} clips written in {time.perf_counter() - t0:.1f} s", flush=True)
        fig["on_device"] = {}
        for precision in ("fp32", "bf16"):
            r = on_device_rate(cache, work, s, device, precision, s.batch)
            fig["on_device"][precision] = r
            ceiling = fig["matmul_tflops"][precision]
            print(f"train steps/s on device {precision} B={s.batch}: {r['steps_per_s']:.2f} "
                  f"({r['tflops']:.3f} TFLOP/s = {100 * r['tflops'] / ceiling:.1f}% of the {precision} matmul rate; "
                  f"{r['step_tflop'] * 1e3:.1f} GFLOP/step, {r['params'] / 1e6:.1f} M params)", flush=True)
            save()
        ratio = fig["on_device"]["bf16"]["steps_per_s"] / fig["on_device"]["fp32"]["steps_per_s"]
        print(f"train bf16/fp32 speed-up B={s.batch}: {ratio:.2f}x", flush=True)
        fig["bf16_speedup"] = ratio
        precision = "bf16" if cuda else "fp32"
        fig["from_cache"] = {}
        for b in [s.batch] + ([s.big_batch] if s.big_batch and s.big_batch != s.batch else []):
            big = {} if b == s.batch else {"steps": 40, "log_every": 10, "loader_steps": 40}
            sb = dataclasses.replace(s, **big)
            dev = fig["on_device"][precision]["steps_per_s"] if b == s.batch else \
                on_device_rate(cache, work, sb, device, precision, b)["steps_per_s"]
            r = from_cache_rate(cache, work, sb, device, precision, b)
            fig["from_cache"][str(b)] = {"steps_per_s": r["steps_per_s"], "on_device_steps_per_s": dev,
                                         "ratio": r["steps_per_s"] / dev}
            print(f"train steps/s from cache {precision} B={b}: {r['steps_per_s']:.2f} "
                  f"({100 * r['steps_per_s'] / dev:.0f}% of on device {dev:.2f}; {s.workers} loader workers)", flush=True)
            save()
    fig["max_batch"] = []
    for name in TABLE_I:
        if name not in configs:
            print(f"max batch {name} in {s.budget_gb:g} GB: skipped (not in --configs)", flush=True)
            continue
        if args.time_budget_s is not None and time.perf_counter() - start > args.time_budget_s:
            print(f"max batch {name} in {s.budget_gb:g} GB: skipped (--time-budget-s {args.time_budget_s:g})", flush=True)
            continue
        t0 = time.perf_counter()
        r = max_batch(name, s, device, "bf16" if cuda else "fp32")
        r["bench_s"] = time.perf_counter() - t0
        fig["max_batch"].append(r)
        mb = r["max_batch"]
        if s.model != PAPER_MODEL:
            vs = " (a smaller model than the paper's: not comparable to Table I)"
        else:
            vs = f" = {mb / r['paper']:.1f}x paper's {r['paper']}" if isinstance(mb, int) and mb else ""
        print(f"max batch {name} in {s.budget_gb:g} GB: {mb}{vs} ({r['how']}; {r['bench_s']:.1f} s)", flush=True)
        save()
    save()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count()))
    sys.exit(main())
