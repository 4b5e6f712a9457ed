"""Benchmark of the training losses: forward+backward time and peak memory per batch size.

    .venv/bin/python bench/bench_losses.py --quick                  # smoke run, seconds
    .venv/bin/python bench/bench_losses.py                          # B = 32, 256, 1024
    .venv/bin/python bench/bench_losses.py --budget-gb 32           # + max batch in 32 GB

Configurations (loss part only: the encoders are not run; ``pre`` variants feed sequences
that already have the target length, as the model's ``pre`` interpolation would):
  cav                mean-pooled (B, c) embeddings, symmetric InfoNCE
  eucl_pre_v2a       interpolated Euclidean on (B, S, c) x (B, S, c)  (video resampled to audio length)
  eucl_pre_a2v       interpolated Euclidean on (B, T, c) x (B, T, c)
  eucl_post_v2a      video (B, T, c) interpolated to audio (B, S, c) inside the distance
  eucl_post_a2v      audio interpolated to each video's length inside the distance
  naive_post_v2a     same as eucl_post_v2a, but the broadcast way: (B, B, S, c) materialised
  soft_dtw           soft-DTW, gamma 0.1, video (B, T, c) vs audio (B, S, c)
  wasserstein        entropic OT as training runs it: the DistanceSpec defaults (eps 0.1
                     relative to each pair's mean step cost, pos_weight 1, Sinkhorn to the
                     marginal tolerance, eps-scaling), not a fixed iteration count
Every distance is ``DistanceSpec(...).matrix`` with the spec's defaults, the call training
makes (``scav.model.objective.sequence_distance``), so the bench measures what training runs.
Video lengths are mixed (T, 0.96 T, 0.8 T: native-fps clips), audio lengths are all S.
Each SCAV distance is followed by ``scav_loss`` and one backward pass.

Each configuration runs in its own subprocess. Peak memory: on CUDA
``torch.cuda.max_memory_allocated`` minus the memory held before the step (inputs); on CPU
the child's ``ru_maxrss`` after the step minus its ``ru_maxrss`` before it (PyTorch's CPU
allocator returns large blocks to the OS, so RSS tracks tensor memory; includes allocator
overhead). Configurations whose estimated memory exceeds ``--mem-limit-gb`` or whose DP cell
count exceeds ``--max-cells`` are skipped with the reason printed; a child running past
``--timeout-s`` is reported as such. ``--quick`` runs tiny sizes in-process (seconds; on CPU its memory column is only the RSS
growth, a lower bound). ``--budget-gb``: the largest batch (multiple of 8)
whose measured peak fits the budget, found by doubling from 8 and then bisecting, one
subprocess per trial (our version of Table I's "max BS").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass

import typer
from scav.core.device import resolve_device

CONFIGS = (
    "cav",
    "eucl_pre_v2a",
    "eucl_pre_a2v",
    "eucl_post_v2a",
    "eucl_post_a2v",
    "naive_post_v2a",
    "soft_dtw",
    "wasserstein",
)
GB = 1024**3


@dataclass(frozen=True)
class BenchConfig:
    batch_sizes: tuple[int, ...] = (32, 256, 1024)
    video_steps: int = 250
    audio_steps: int = 62
    dim: int = 512
    configs: tuple[str, ...] = CONFIGS
    device: str = "auto"
    threads: int = 2
    repeats: int = 3
    timeout_s: float = 600.0
    mem_limit_gb: float = 16.0
    max_cells: float = 2e9  # soft-DTW / OT: B^2 * T * S cells
    budget_gb: float | None = None
    in_process: bool = False  # --quick: no subprocesses (fast; CPU memory column = RSS growth only)

    def __post_init__(self):
        unknown = set(self.configs) - set(CONFIGS)
        if unknown:
            raise ValueError(f"unknown configs {sorted(unknown)}; choose from {CONFIGS}")


def estimate_bytes(cfg: BenchConfig, name: str, b: int) -> float:
    """Rough peak-memory estimate (float32) of the largest tensors of one step."""
    t, s, c = cfg.video_steps, cfg.audio_steps, cfg.dim
    inputs = 4 * b * (t + s) * c * 3  # inputs, grads, encoder-side copies
    if name == "cav":
        return 4 * b * c * 4 + 4 * b * b * 8
    if name.startswith("eucl"):
        return inputs + 4 * b * max(t, s) * c * 4
    if name == "naive_post_v2a":
        return inputs + 4 * b * b * s * c * 3
    # soft-DTW / OT: a few (pairs, T, S) block tensors, at most the chunk (2^24 cells) each
    cells = min(b * b * t * s, 2**24)
    return inputs + 4 * cells * 8


def dp_cells(cfg: BenchConfig, name: str, b: int) -> float:
    if name in ("soft_dtw", "wasserstein"):
        return float(b) * b * cfg.video_steps * cfg.audio_steps
    return 0.0


# ----------------------------------------------------------------------------- worker (child)


def _worker(spec: dict) -> dict:
    import resource
    import time

    import torch
    from scav.sequence.losses import cav_loss, scav_loss
    from scav.sequence.spec import DistanceSpec

    torch.set_num_threads(spec["threads"])
    dev = torch.device(spec["device"])
    name, b, t, s, c = spec["name"], spec["batch"], spec["video_steps"], spec["audio_steps"], spec["dim"]
    g = torch.Generator().manual_seed(0)
    if name == "eucl_pre_v2a":
        t = s
    if name == "eucl_pre_a2v":
        s = t
    choices = torch.tensor([t, round(0.96 * t), round(0.8 * t)])
    v_len = choices[torch.randint(0, 3, (b,), generator=g)]
    v_len[0] = t
    if name.startswith("eucl_pre"):
        v_len[:] = t  # pre-interpolated: every video already has its audio's length
    a_len = torch.full((b,), s)
    video = torch.randn(b, t, c, generator=g).to(dev) * 0.05
    audio = torch.randn(b, s, c, generator=g).to(dev) * 0.05
    v_mask = (torch.arange(t)[None] < v_len[:, None]).to(dev)
    a_mask = (torch.arange(s)[None] < a_len[:, None]).to(dev)
    video = (video * v_mask[..., None]).requires_grad_(True)
    audio = (audio * a_mask[..., None]).requires_grad_(True)
    log_scale = torch.tensor(2.66, device=dev, requires_grad=True)

    if name.startswith("eucl"):
        distance = DistanceSpec("euclidean", resample="audio" if name.endswith("a2v") else "video")
    elif name in ("soft_dtw", "wasserstein"):
        distance = DistanceSpec(name)  # training's defaults: gamma 0.1 / eps 0.1, tol, max_iter

    def naive_post_v2a(x, xm, y, ym):
        # broadcast reference: interpolate x to S (all audio lengths equal here), then (B, B, S, c)
        from scav.sequence.distances import interpolate_to_length

        p = interpolate_to_length(x, xm, y.shape[1])
        return ((p[:, None] - y[None, :]) ** 2).sum(-1).mean(-1)

    def step():
        if name == "cav":
            ve = (video * v_mask[..., None]).sum(1) / v_mask.sum(1, keepdim=True)
            ae = (audio * a_mask[..., None]).sum(1) / a_mask.sum(1, keepdim=True)
            loss = cav_loss(ve, ae, log_scale)["cav_loss"]
        else:
            if name == "naive_post_v2a":
                d = naive_post_v2a(video, v_mask, audio, a_mask)
            else:
                d = distance.matrix(video, v_mask, audio, a_mask)
            loss = scav_loss(d, log_scale * 0.0)["scav_loss"]
        loss.backward()
        video.grad = audio.grad = log_scale.grad = None

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    if dev.type == "cuda":
        sync()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    step()  # first step: memory peak (and warm-up)
    sync()
    first = time.perf_counter() - t0
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    times = []
    for _ in range(spec["repeats"]):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    return {"time_s": min(times) if times else first, "peak_bytes": peak}


def _run_child(spec: dict, timeout_s: float) -> dict:
    try:
        proc = subprocess.run(
            [sys.executable, __file__, "--worker-json", json.dumps(spec)],
            capture_output=True, text=True, timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        return {"status": f"time limit {timeout_s:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"status": "failed: " + ("out of memory" if "out of memory" in proc.stderr else tail[:80])}
    return {"status": "ok", **json.loads(lines[-1])}


# ----------------------------------------------------------------------------- driver


def measure(cfg: BenchConfig, device: str, name: str, b: int, budget: float | None = None) -> dict:
    limit = budget if budget is not None else cfg.mem_limit_gb * GB
    est = estimate_bytes(cfg, name, b)
    if est > limit:
        return {"status": f"skipped: est. {est / GB:.1f} GB > {limit / GB:.1f} GB"}
    cells = dp_cells(cfg, name, b)
    if device == "cpu" and cells > cfg.max_cells:
        return {"status": f"skipped: {cells:.1e} DP cells > --max-cells {cfg.max_cells:.0e} (CPU)"}
    spec = {
        "name": name, "batch": b, "video_steps": cfg.video_steps, "audio_steps": cfg.audio_steps,
        "dim": cfg.dim, "device": device, "threads": cfg.threads, "repeats": cfg.repeats,
    }
    if cfg.in_process:
        return {"status": "ok", **_worker(spec)}
    return _run_child(spec, cfg.timeout_s)


def max_batch(cfg: BenchConfig, device: str, name: str, budget_gb: float) -> str:
    """Largest multiple of 8 whose measured peak fits ``budget_gb`` (doubling, then bisecting)."""
    budget = budget_gb * GB

    def fits(b: int) -> bool | None:
        r = measure(cfg, device, name, b, budget)
        if r["status"] == "ok":
            return r["peak_bytes"] <= budget
        if r["status"].startswith("skipped: est") or "memory" in r["status"]:
            return False
        return None  # too slow / skipped for time: unknown

    lo, b = 0, 8
    while True:
        ok = fits(b)
        if ok is None:
            return f">= {lo} (time limit at {b})" if lo else f"? (time limit at {b})"
        if not ok:
            break
        lo, b = b, b * 2
        if b > 1 << 16:
            return f">= {lo}"
    hi = b
    while hi - lo > 8:
        mid = (lo + hi) // 2 // 8 * 8
        ok = fits(mid)
        if ok is None:
            return f">= {lo} (time limit at {mid})"
        lo, hi = (mid, hi) if ok else (lo, mid)
    return str(lo)


def run(cfg: BenchConfig) -> list[dict]:
    """Measure every (config, batch size); returns rows (also printed as a table)."""
    device = str(resolve_device(cfg.device))
    rows = []
    for name in cfg.configs:
        for b in cfg.batch_sizes:
            r = measure(cfg, device, name, b)
            rows.append({"config": name, "batch": b, **r})
            _print_row(rows[-1])
        if cfg.budget_gb is not None:
            mb = max_batch(cfg, device, name, cfg.budget_gb)
            rows.append({"config": name, "batch": "max", "status": f"max BS in {cfg.budget_gb} GB: {mb}"})
            _print_row(rows[-1])
    _print_naive_ratio(rows)
    return rows


def _print_row(r: dict) -> None:
    if r["status"] == "ok":
        print(f"{r['config']:<16} B={r['batch']:<6} {r['time_s'] * 1e3:>10.1f} ms  {r['peak_bytes'] / 2**20:>10.1f} MiB", flush=True)
    else:
        print(f"{r['config']:<16} B={r['batch']:<6} {r['status']}", flush=True)


def _print_naive_ratio(rows: list[dict]) -> None:
    ok = {(r["config"], r["batch"]): r for r in rows if r["status"] == "ok"}
    for (name, b), naive in ok.items():
        if name != "naive_post_v2a" or ("eucl_post_v2a", b) not in ok:
            continue
        ours = ok[("eucl_post_v2a", b)]
        if min(naive["peak_bytes"], ours["peak_bytes"]) < 2**20:
            mem = "peak memory below resolution (< 1 MiB)"
        else:
            mem = f"peak memory x{naive['peak_bytes'] / ours['peak_bytes']:.2f}"
        print(f"naive/grouped eucl_post_v2a at B={b}: time x{naive['time_s'] / ours['time_s']:.2f}, {mem}")


app = typer.Typer(add_completion=False)


@app.command()
def main(
    quick: bool = typer.Option(False, help="tiny sizes, finishes in seconds (smoke run)"),
    batch_sizes: str = typer.Option("32,256,1024", help="comma-separated batch sizes"),
    video_steps: int = 250,
    audio_steps: int = 62,
    dim: int = 512,
    configs: str = typer.Option(",".join(CONFIGS), help="comma-separated subset"),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    threads: int = typer.Option(2, help="torch CPU threads per child"),
    repeats: int = 3,
    timeout_s: float = 600.0,
    mem_limit_gb: float = 16.0,
    max_cells: float = 2e9,
    budget_gb: float = typer.Option(None, help="also search the max batch fitting this budget"),
    worker_json: str = typer.Option(None, hidden=True),
) -> None:
    if worker_json is not None:
        print(json.dumps(_worker(json.loads(worker_json))))
        return
    if quick:
        cfg = BenchConfig(
            batch_sizes=(4, 8), video_steps=20, audio_steps=6, dim=16, device=device,
            threads=threads, repeats=1, timeout_s=60.0, mem_limit_gb=mem_limit_gb,
            budget_gb=budget_gb, in_process=True,
        )
    else:
        cfg = BenchConfig(
            batch_sizes=tuple(int(b) for b in batch_sizes.split(",")),
            video_steps=video_steps, audio_steps=audio_steps, dim=dim,
            configs=tuple(configs.split(",")), device=device, threads=threads, repeats=repeats,
            timeout_s=timeout_s, mem_limit_gb=mem_limit_gb, max_cells=max_cells, budget_gb=budget_gb,
        )
    print(f"# bench_losses {json.dumps(asdict(cfg))}")
    print(f"# device: {str(resolve_device(cfg.device))}; per config: fwd+bwd time (min of repeats), peak memory")
    run(cfg)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    app()
