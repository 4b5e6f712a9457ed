"""`python -m scav.demo`: SCAV end to end on the synthetic benchmark, on a laptop CPU.

generate (synthetic media + manifest) -> extract (stand-in encoders, or CLIP +
BEATs when their weights are given) -> oracle check of the data -> train CAV
and SCAV -> retrieve with agg, seq and hybrid (several k) -> one table (printed,
``results.json``) and a figure (``results.png``).

Everything lands under ``--out`` and is reused by a second run (media, feature
cache, checkpoints, exported latents) unless ``--fresh``. See docs/demo.md.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class DemoConfig:
    """One demo run. Model/training sizes chosen by measurement on 2 CPU cores (docs/demo.md)."""

    out: str = "demo_out"
    seed: int = 0
    fresh: bool = False
    clip_weights: str | None = None  # CLIP ViT-B/32 folder -> real encoders (with beats_ckpt)
    beats_ckpt: str | None = None
    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 50
    val_clips: int = 40
    val_every: int = 50
    threads: int = 2
    # hybrid pre-selection sizes (clipped to the test split's size); table_k go into the table
    ks: tuple[int, ...] = (1, 2, 5, 10, 20, 60)
    table_ks: tuple[int, ...] = (5, 10)
    c: int = 128
    video_layers: int = 2
    audio_layers: int = 1
    heads: int = 4
    mlp_hidden: int = 256
    interp: str = "post"  # SCAV's interpolation (paper, MUSIC: post a2v)
    resample: str = "audio"  # the paper's a->v: audio latents resampled to the video length
    data: dict[str, Any] = field(default_factory=dict)  # SyntheticConfig overrides

    def validate(self) -> None:
        if (self.clip_weights is None) != (self.beats_ckpt is None):
            raise ValueError("give both --clip-weights and --beats-ckpt (real encoders), or neither (stand-ins)")
        if self.steps < 1 or self.batch_size < 2 or self.threads < 1:
            raise ValueError("steps >= 1, batch_size >= 2 and threads >= 1 are required")
        if not self.ks or min(self.ks) < 1:
            raise ValueError("ks must be positive integers")

    @property
    def real_encoders(self) -> bool:
        return self.clip_weights is not None


# ----------------------------------------------------------------------------- stages


class StageTimer:
    """Prints '[i/n] name ...' and the time each stage took; keeps the timings."""

    def __init__(self, console, n: int):
        self.console, self.n, self.i = console, n, 0
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn, *args, **kwargs):
        self.i += 1
        self.console.rule(f"[bold][{self.i}/{self.n}] {name}")
        t0 = time.perf_counter()
        result = fn(*args, **kwargs)
        dt = time.perf_counter() - t0
        self.seconds[name] = round(dt, 2)
        self.console.print(f"[green]done[/green] {name} in {dt:.1f} s")
        return result


def synthetic_config(cfg: DemoConfig):
    from scav.data_manifests.synthetic import SyntheticConfig

    return SyntheticConfig(**{**cfg.data, "seed": cfg.seed})


def stage_generate(cfg: DemoConfig, out: Path) -> Path:
    from scav.data_manifests.synthetic import build_synthetic
    from tqdm.auto import tqdm

    scfg = synthetic_config(cfg)
    n_sources = scfg.classes * scfg.sources_per_class
    with tqdm(total=n_sources, unit="source", desc="generate", dynamic_ncols=True) as bar:
        manifest = build_synthetic(out / "data", scfg, progress=lambda done, total: bar.update(done - bar.n))
        bar.update(n_sources - bar.n)
    return manifest


def _encoder_spec(cfg: DemoConfig):
    from scav.extract.runner import EncoderSpec

    if cfg.real_encoders:
        return EncoderSpec("clip-vit-b32", "beats-iter3-as2m", cfg.clip_weights, cfg.beats_ckpt)
    return EncoderSpec("pixels", "fbank")


def _tag(cfg: DemoConfig) -> str:
    spec = _encoder_spec(cfg)
    return f"{spec.video}+{spec.audio}"


def stage_extract(cfg: DemoConfig, manifest: Path, cache: Path) -> dict:
    from scav.extract.runner import ExtractConfig, run

    summary = run(ExtractConfig(manifest=manifest, out=cache, encoders=_encoder_spec(cfg), progress=True))
    if summary["failed"]:
        raise RuntimeError(f"{summary['failed']} clips failed to extract: {summary['failures'][:3]}")
    return summary


def oracle_check(cache_path: Path, split: str = "test") -> dict | None:
    """The data property, measured on the stand-in features before any training.

    agg: mean-pooled pixels mapped to mean-pooled fbank by ridge regression fitted on
    train (the best *linear* aggregation model), cosine retrieval. seq: Pearson
    correlation of the video's frame-difference energy and the audio's spectral flux,
    both binned at 25 Hz with known alignment (no learning). Stand-in caches only.
    """
    import numpy as np
    from scav.core.cache import FeatureCache
    from scav.data_manifests import synthetic as syn

    cache = FeatureCache.open(cache_path)
    if cache.meta.video.name != "pixels" or cache.meta.audio.name != "fbank":
        return None

    def load(sp):
        return [cache.get(c.clip_id) for c in cache.clips(sp)]

    train, test = load("train"), load(split)
    mean_v = lambda fs: np.stack([f.video.astype(np.float64).mean(0) for f in fs])  # noqa: E731
    mean_a = lambda fs: np.stack([f.audio.astype(np.float64).mean(0) for f in fs])  # noqa: E731
    agg = syn.ridge_agg_scores(mean_v(train), mean_a(train), mean_v(test), mean_a(test), alpha=10.0)
    bins = cache.meta.audio.dim // 16  # (16 frames x bins) per step, time-major
    vc, ac = [], []
    for f in test:
        dur = f.info.duration
        vc.append(syn.resample_curve(syn.video_onset_curve(f.video), f.video_times - (f.info.start or 0.0), 25, dur))
        fb = f.audio.astype(np.float64).reshape(-1, bins)
        ac.append(syn.resample_curve(syn.audio_onset_curve(fb), np.arange(len(fb)) * 0.01 + 0.0125, 25, dur))
    seq = syn.oracle_scores(np.stack(vc), np.stack(ac))
    labels = np.array([f.info.label for f in test])
    per_class = len(test) / max(1, len(set(labels)))
    return {
        "split": split,
        "clips": len(test),
        "chance_within_class_r1": round(100 / per_class, 1),
        "agg_ridge": {"a2v_r1": round(100 * syn.recall_at_1(agg.T), 1), "v2a_r1": round(100 * syn.recall_at_1(agg), 1),
                      "v2a_class_acc": round(100 * float(np.mean(labels[agg.argmax(1)] == labels)), 1)},
        "onset_correlation": {"a2v_r1": round(100 * syn.recall_at_1(seq.T), 1),
                              "v2a_r1": round(100 * syn.recall_at_1(seq), 1)},
    }


def train_config(cfg: DemoConfig, cache: Path, out: Path, kind: str):
    from scav.model.config import ModelConfig, ObjectiveConfig
    from scav.train import TrainConfig

    return TrainConfig(
        cache=str(cache), out=str(out), split="train", val_clips=cfg.val_clips, val_every=cfg.val_every,
        steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, warmup_steps=cfg.warmup_steps,
        keep_best=3, log_every=25, seed=cfg.seed, device="cpu",
        model=ModelConfig(c=cfg.c, video_layers=cfg.video_layers, audio_layers=cfg.audio_layers, heads=cfg.heads,
                          video_mlp_hidden=cfg.mlp_hidden, audio_mlp_hidden=cfg.mlp_hidden),
        objective=ObjectiveConfig(kind=kind, interp=cfg.interp, resample=cfg.resample),
    )


def stage_train(cfg: DemoConfig, cache: Path, run_dir: Path, kind: str, console) -> Path:
    """Train one model, or reuse ``averaged.pt`` of a finished run with the same config."""
    return stage_train_config(train_config(cfg, cache, run_dir, kind), console)


def stage_train_config(tcfg, console) -> Path:
    """Train ``tcfg`` (a TrainConfig), or reuse ``averaged.pt`` of a finished run with the same
    config in ``tcfg.out``; resume an interrupted one."""
    from scav.train import run

    run_dir, kind = Path(tcfg.out), tcfg.objective.kind
    done = run_dir / "averaged.pt"
    saved = run_dir / "config.json"
    same = saved.is_file() and json.loads(saved.read_text()) == json.loads(json.dumps(tcfg.to_dict()))
    if same and done.is_file():
        console.print(f"reusing {done}")
        return done
    if not same and run_dir.exists():
        console.print(f"{run_dir} holds a run with other settings: starting it again")
        shutil.rmtree(run_dir)
    resume = same and (run_dir / "last.pt").is_file()
    if resume:
        console.print(f"resuming the interrupted run in {run_dir}")
    summary = run(dataclasses.replace(tcfg, resume=resume))
    console.print(f"{kind}: {summary['params']:,} trainable parameters, final loss {summary['final_loss']:.3f}")
    return done


def stage_retrieve(cfg: DemoConfig, cache: Path, checkpoints: dict[str, Path], latents: Path) -> dict:
    """agg + seq + hybrid for each model; hybrid for every k. Latents are exported and reused."""
    from scav.retrieve.evaluate import RetrieveConfig, run

    n_test = None
    out: dict[str, Any] = {}
    for name, ckpt in checkpoints.items():
        base = dict(checkpoint=str(ckpt), split="test", cache=str(cache), device="cpu", export=True,
                    export_dir=str(latents))
        res = run(RetrieveConfig(method="agg", **base))
        n_test = res["num_queries"]
        rows = {"agg": res["results"]["agg"]}
        rows["seq"] = run(RetrieveConfig(method="seq", **base))["results"]["seq"]
        hybrid = {}
        for k in sorted({min(k, n_test) for k in cfg.ks}):
            hybrid[k] = run(RetrieveConfig(method="hybrid", k=k, **base))["results"]["hybrid"]
        out[name] = {"rows": rows, "hybrid": hybrid, "encoders": res["encoders"], "step": res["step"],
                     "seq_distance": res["seq_distance"], "objective": res["objective"]}
        log.info("%s retrieved", name)
    out["num_test_clips"] = n_test
    return out


# ----------------------------------------------------------------------------- report


def table_rows(ret: dict, table_ks: tuple[int, ...]) -> list[dict]:
    """The comparison rows: CAV agg, CAV seq, SCAV agg, SCAV seq, SCAV hybrid k=..."""
    rows = []
    for model in ("CAV", "SCAV"):
        for m in ("agg", "seq"):
            r = ret[model]["rows"][m]
            rows.append({"model": model, "method": m, "k": None, **_pick(r)})
    n = ret["num_test_clips"]
    for k in table_ks:
        kk = min(k, n)
        if kk in ret["SCAV"]["hybrid"]:
            rows.append({"model": "SCAV", "method": "hybrid", "k": kk, **_pick(ret["SCAV"]["hybrid"][kk])})
    return rows


def _pick(r: dict) -> dict:
    return {"a2v": {k: r["a2v"][k] for k in ("R@1", "R@5", "R@10")},
            "v2a": {k: r["v2a"][k] for k in ("R@1", "R@5", "R@10")},
            "seconds": r["seconds"]}


def row_label(row: dict) -> str:
    return f"{row['model']} {row['method']}" + (f" k={row['k']}" if row["k"] is not None else "")


def render_table(rows: list[dict], title: str):
    from rich.table import Table

    t = Table(title=title)
    t.add_column("model / retrieval", no_wrap=True)
    for d in ("A->V", "V->A"):
        for k in ("R@1", "R@5", "R@10"):
            t.add_column(f"{d} {k}", justify="right")
    t.add_column("time s", justify="right")
    for row in rows:
        cells = [f"{row[d][k]:.1f}" for d in ("a2v", "v2a") for k in ("R@1", "R@5", "R@10")]
        t.add_row(row_label(row), *cells, f"{row['seconds']:.3f}")
    return t


def plot_results(results: dict, path: Path) -> Path:
    """Left: R@1 by method (bars, both directions). Right: SCAV hybrid R@1 and time against k (log x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = results["table"]
    labels = [row_label(r) for r in rows]
    a2v = [r["a2v"]["R@1"] for r in rows]
    v2a = [r["v2a"]["R@1"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [1.3, 1]})
    x = np.arange(len(rows))
    w = 0.38
    b1 = ax1.bar(x - w / 2, a2v, w, label="A→V", color="#4C72B0")
    b2 = ax1.bar(x + w / 2, v2a, w, label="V→A", color="#DD8452")
    for bars in (b1, b2):
        ax1.bar_label(bars, fmt="%.0f", fontsize=8, padding=1)
    chance = results.get("oracle", {}) or {}
    if chance.get("chance_within_class_r1") is not None:
        ax1.axhline(chance["chance_within_class_r1"], color="grey", ls=":", lw=1)
        ax1.text(-0.5, chance["chance_within_class_r1"] + 12, "dotted: within-class chance",
                 ha="left", va="bottom", fontsize=8, color="grey")
    ax1.set_xticks(x, labels, rotation=20, ha="right", fontsize=9)
    ax1.set_ylabel("R@1 (%)")
    ax1.set_ylim(0, 105)
    ax1.set_title(f"Retrieval on the synthetic test split ({results['num_test_clips']} clips)")
    ax1.legend(loc="upper left", fontsize=9)

    hyb = results["hybrid_sweep"]
    ks = [h["k"] for h in hyb]
    ax2.plot(ks, [h["a2v_r1"] for h in hyb], "o-", color="#4C72B0", label="SCAV hybrid A→V")
    ax2.plot(ks, [h["v2a_r1"] for h in hyb], "s-", color="#DD8452", label="SCAV hybrid V→A")
    cav = next(r for r in rows if r["model"] == "CAV" and r["method"] == "agg")
    ax2.axhline(cav["a2v"]["R@1"], color="#4C72B0", ls="--", lw=1, label="CAV agg A→V")
    ax2.axhline(cav["v2a"]["R@1"], color="#DD8452", ls="--", lw=1, label="CAV agg V→A")
    ax2.set_xscale("log")
    ax2.set_xticks(ks, [str(k) for k in ks])
    ax2.set_xlabel("k (candidates pre-selected by agg; k=1: agg, k=N: seq)")
    ax2.set_ylabel("R@1 (%)")
    ax2.set_ylim(0, 105)
    ax3 = ax2.twinx()
    ms = [1000 * h["seconds"] for h in hyb]
    ax3.plot(ks, ms, "^:", color="black", label="time, both directions (ms)")
    ax3.set_ylabel("retrieval time, both directions (ms)")
    ax3.set_ylim(0, max(ms) * 1.3 or 1)
    h1, l1 = ax2.get_legend_handles_labels()
    h2, l2 = ax3.get_legend_handles_labels()
    ax2.legend(h1 + h2, l1 + l2, loc="lower right", bbox_to_anchor=(1.0, 0.1), fontsize=8)
    ax2.set_title("Hybrid retrieval against k (cf. paper Table III)")
    enc = results["encoders"]
    fig.suptitle(f"SCAV demo: video={enc['video']}, audio={enc['audio']}", fontsize=10)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def run(cfg: DemoConfig, console=None) -> dict:
    """The whole pipeline; returns the results dict (also written to ``<out>/results.json``)."""
    import torch
    from rich.console import Console

    cfg.validate()
    console = console or Console(width=max(110, Console().width))  # the table needs ~100 columns
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    if cfg.fresh and out.exists():
        console.print(f"--fresh: removing {out}")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    tag = _tag(cfg)
    cache = out / f"features-{tag}.zarr"
    runs = out / f"runs-{tag}"
    t_all = time.perf_counter()
    st = StageTimer(console, 6)
    manifest = st.run("generate the synthetic benchmark", stage_generate, cfg, out)
    extract = st.run(f"extract features ({tag})", stage_extract, cfg, manifest, cache)
    console.print(f"encoders: video={extract['encoders']['video']}, audio={extract['encoders']['audio']}")
    oracle = st.run("oracle check of the data (no learning)", oracle_check, cache)
    if oracle:
        console.print(
            f"test split, {oracle['clips']} clips (within-class chance R@1 {oracle['chance_within_class_r1']}%): "
            f"mean-pooled ridge (agg) R@1 A->V {oracle['agg_ridge']['a2v_r1']}% V->A {oracle['agg_ridge']['v2a_r1']}% "
            f"(class found {oracle['agg_ridge']['v2a_class_acc']}%); onset-curve correlation R@1 "
            f"A->V {oracle['onset_correlation']['a2v_r1']}% V->A {oracle['onset_correlation']['v2a_r1']}%"
        )
    ckpt_cav = st.run("train CAV (aggregation loss)", stage_train, cfg, cache, runs / "cav", "cav", console)
    ckpt_scav = st.run(
        f"train SCAV (interpolated Euclidean, {cfg.interp}, {cfg.resample} resampled)",
        stage_train, cfg, cache, runs / "scav", "scav", console,
    )
    ret = st.run("retrieve: agg, seq, hybrid", stage_retrieve, cfg, cache,
                 {"CAV": ckpt_cav, "SCAV": ckpt_scav}, out / f"latents-{tag}")
    rows = table_rows(ret, cfg.table_ks)
    hybrid_sweep = [
        {"k": k, "a2v_r1": r["a2v"]["R@1"], "v2a_r1": r["v2a"]["R@1"], "seconds": r["seconds"]}
        for k, r in sorted(ret["SCAV"]["hybrid"].items())
    ]
    encoders = ret["SCAV"]["encoders"]
    results = {
        "encoders": encoders,
        "stand_in_encoders": not cfg.real_encoders,
        "num_test_clips": ret["num_test_clips"],
        "table": rows,
        "hybrid_sweep": hybrid_sweep,
        "cav_hybrid_sweep": [
            {"k": k, "a2v_r1": r["a2v"]["R@1"], "v2a_r1": r["v2a"]["R@1"], "seconds": r["seconds"]}
            for k, r in sorted(ret["CAV"]["hybrid"].items())
        ],
        "oracle": oracle,
        "seq_distance": {m: ret[m]["seq_distance"] for m in ("CAV", "SCAV")},
        "stage_seconds": st.seconds,
        "total_seconds": round(time.perf_counter() - t_all, 1),
        "demo_config": {**dataclasses.asdict(cfg), "ks": list(cfg.ks), "table_ks": list(cfg.table_ks)},
        "data_config": synthetic_config(cfg).to_dict(),
        "extract": {k: extract[k] for k in ("requested", "already_present", "extracted", "seconds")},
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    plot_results(results, out / "results.png")
    title = (f"SCAV vs CAV, synthetic test split ({ret['num_test_clips']} clips), R@K %; "
             f"encoders: video={encoders['video']}, audio={encoders['audio']}")
    console.print(render_table(rows, title))
    console.print(f"wrote {out / 'results.json'} and {out / 'results.png'}; stage times (s): {st.seconds}; "
                  f"total {results['total_seconds']} s")
    return results
