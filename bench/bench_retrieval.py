"""Table III timing: seq / hybrid(k) / agg retrieval of 1K queries among 10K candidates.

Random latents of the paper's shapes (62 steps x 512 dims per clip, both modalities,
as for SCAV_eucl/pre(v->a) where every video is resampled to the 62 audio steps);
audio = video + noise so the ranks are not pure chance. Times one direction (A->V:
audio queries, video candidates), like the paper's table, with the interpolated
Euclidean v->a distance.

Also measured in the same run:
- a naive per-pair loop (F.interpolate + squared-error mean per pair, as a
  straightforward implementation would do) on a subset of pairs; its per-pair time x
  Q x N is the extrapolated full seq time;
- the machine's fp32 matmul throughput (GFLOP/s of a large square matmul), and the
  fraction of it our seq method reaches, counting the FLOPs of the cross term only
  (2 * Q * N * L * c).

    python bench/bench_retrieval.py                 # full size (CPU), ~35 s on 2 cores
    python bench/bench_retrieval.py --device cuda
    python bench/bench_retrieval.py --quick         # tiny smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import torch
import torch.nn.functional as F
from scav.model.latents import Latents
from scav.retrieve.search import (
    BlockConfig,
    agg_search,
    hybrid_rerank,
    seq_blocks,
    seq_search,
)
from scav.sequence.metrics import summarize_ranks
from scav.sequence.spec import DistanceSpec

# Paper Table III (seconds for 1K queries among 10K candidates; V100 GPU / their CPU)
PAPER = {
    "seq": {"gpu": 13.9, "cpu": 741.0},
    "hybrid k=1000": {"gpu": 1.7, "cpu": 7.0},
    "hybrid k=100": {"gpu": 0.5, "cpu": 4.6},
    "hybrid k=10": {"gpu": 0.4, "cpu": 3.6},
    "agg": {"gpu": 0.3, "cpu": 2.6},
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _block(value: str) -> int | str:
    return value if value == "auto" else int(value)


def matmul_gflops(device: torch.device, n: int, reps: int) -> float:
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b  # warm-up
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2.0 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def make_latents(n: int, steps: int, dim: int, noise: float, seed: int) -> tuple[Latents, Latents]:
    g = torch.Generator().manual_seed(seed)
    video = torch.empty(n, steps, dim)
    audio = torch.empty(n, steps, dim)
    for a in range(0, n, 1024):  # in blocks: keeps the peak at the two final arrays
        b = min(a + 1024, n)
        v = torch.randn(b - a, steps, dim, generator=g)
        video[a:b] = v
        audio[a:b] = v + noise * torch.randn(b - a, steps, dim, generator=g)
    mask = torch.ones(n, steps, dtype=torch.bool)
    return Latents.from_padded(video, mask), Latents.from_padded(audio, mask)


def naive_pair_seconds(video: Latents, audio: Latents, pairs: int, device: torch.device) -> float:
    """Seconds per (audio query, video candidate) pair of a plain Python loop."""
    n_q = min(len(audio), max(1, int(pairs**0.5)))
    n_c = max(1, pairs // n_q)
    q, _ = audio.range(0, n_q)
    c, _ = video.range(0, n_c)
    q, c = q.to(device), c.to(device)
    sync(device)
    t0 = time.perf_counter()
    for i in range(n_q):
        qi = q[i]
        for j in range(n_c):
            cj = F.interpolate(c[j].T[None], size=qi.shape[0], mode="linear", align_corners=False)[0].T
            float(((cj - qi) ** 2).sum(-1).mean())  # one value per pair, as a loop would keep
    sync(device)
    return (time.perf_counter() - t0) / (n_q * n_c)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--candidates", type=int, default=10000)
    p.add_argument("--steps", type=int, default=62)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--ks", default="1000,100,10")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--query-block", type=_block, default="auto", help="a number or auto (from free memory)")
    p.add_argument("--candidate-chunk", type=_block, default="auto", help="a number or auto (from free memory)")
    p.add_argument("--precisions", default="fp32,bf16",
                   help="seq precisions timed ('seq' = fp32, 'seq bf16'); on CPU bf16 is emulated "
                        "(same arithmetic as the GPU kernel, not faster)")
    p.add_argument("--naive-pairs", type=int, default=2000, help="pairs timed in the naive loop")
    p.add_argument("--matmul-n", type=int, default=4096)
    p.add_argument("--noise", type=float, default=4.0)
    p.add_argument("--quick", action="store_true", help="tiny sizes, a smoke run")
    p.add_argument("--json", default=None, help="write the figures here")
    args = p.parse_args()
    if args.quick:
        args.queries, args.candidates, args.steps, args.dim = 50, 400, 62, 64
        args.ks, args.naive_pairs, args.matmul_n = "100,10", 200, 512
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    ks = [int(k) for k in args.ks.split(",") if k]

    video, audio = make_latents(args.candidates, args.steps, args.dim, args.noise, seed=0)
    queries = audio.head(args.queries)  # A->V: the first Q audio clips query all N videos
    cfg = BlockConfig(query_block=args.query_block, candidate_chunk=args.candidate_chunk, device=args.device)
    dist = DistanceSpec("euclidean", resample="video")

    gflops = matmul_gflops(device, args.matmul_n, reps=3 if device.type == "cpu" else 20)

    rows: dict[str, dict] = {}

    def timed(name, fn):
        sync(device)
        t0 = time.perf_counter()
        ranks = fn()
        sync(device)
        rows[name] = {"seconds": time.perf_counter() - t0, **summarize_ranks(ranks)}
        print(f"  {name:<16} {rows[name]['seconds']:9.2f} s   R@1 {rows[name]['R@1']:5.1f}", flush=True)
        return ranks

    print(f"{args.queries} queries x {args.candidates} candidates, {args.steps} x {args.dim}, "
          f"device {device}, {args.threads} threads")
    blocks = seq_blocks(queries, video, cfg)
    print(f"seq blocks: {blocks[0]} queries x {blocks[1]} candidates ({args.query_block}, {args.candidate_chunk})")
    seq_ranks = timed("seq", lambda: seq_search(queries, video, "a2v", dist, cfg))
    if "bf16" in args.precisions.split(","):
        bf16 = dataclasses.replace(cfg, precision="bf16")
        r16 = timed("seq bf16", lambda: seq_search(queries, video, "a2v", dist, bf16))
        rows["seq bf16"]["R@1_minus_fp32"] = rows["seq bf16"]["R@1"] - rows["seq"]["R@1"]
        rows["seq bf16"]["ranks_changed"] = int((r16 != seq_ranks).sum())
    for k in ks:
        if k > args.candidates:
            continue
        r = timed(f"hybrid k={k}", lambda k=k: hybrid_rerank(queries, video, "a2v", dist, *agg_search(queries, video, cfg, k=k), cfg))
        rows[f"hybrid k={k}"]["same_ranks_as_seq"] = bool(torch.equal(r, seq_ranks))
    timed("agg", lambda: agg_search(queries, video, cfg)[0])

    per_pair = naive_pair_seconds(video, audio, args.naive_pairs, device)
    naive_full = per_pair * args.queries * args.candidates
    cross_flops = 2.0 * args.queries * args.candidates * args.steps * args.dim
    seq_gflops = cross_flops / rows["seq"]["seconds"] / 1e9
    kind = "gpu" if device.type == "cuda" else "cpu"

    print(f"\nmatmul fp32 ({args.matmul_n}^3): {gflops:.0f} GFLOP/s")
    print(f"seq cross term: {cross_flops / 1e9:.0f} GFLOP -> {seq_gflops:.0f} GFLOP/s = "
          f"{100 * seq_gflops / gflops:.0f}% of the matmul rate")
    print(f"naive per-pair loop: {per_pair * 1e6:.0f} us/pair on {args.naive_pairs} pairs -> "
          f"{naive_full:.0f} s extrapolated to {args.queries}x{args.candidates} pairs "
          f"({naive_full / rows['seq']['seconds']:.0f}x our seq)")
    full_size = (args.queries, args.candidates, args.steps, args.dim) == (1000, 10000, 62, 512)
    print(f"\n{'method':<16} {'ours (s)':>10} {'paper ' + kind + ' (s)':>16} {'paper/ours':>11}")
    for name, r in rows.items():
        ref = PAPER.get(name, {}).get(kind)
        ratio = f"{ref / r['seconds']:.1f}x" if ref and full_size else "-"
        print(f"{name:<16} {r['seconds']:>10.2f} {ref if ref else '-':>16} {ratio:>11}")
    if not full_size:
        print("(not the paper's sizes: ratios omitted)")
    if args.json:
        out = {
            "queries": args.queries, "candidates": args.candidates, "steps": args.steps, "dim": args.dim,
            "device": str(device), "threads": args.threads, "torch": torch.__version__, "seq_blocks": list(blocks),
            "matmul_gflops": gflops, "seq_cross_term_gflop": cross_flops / 1e9, "seq_gflops": seq_gflops,
            "naive_seconds_per_pair": per_pair, "naive_pairs_timed": args.naive_pairs,
            "naive_extrapolated_seconds": naive_full, "methods": rows,
            "paper": {k: v[kind] for k, v in PAPER.items()},
        }
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
