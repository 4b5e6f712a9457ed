"""One probe run (``scav-probe`` without the CLI): select -> embed -> fit -> report.

Clips are chosen (and bad splits refused) before the checkpoint is loaded, so a typo fails
at once. Classes are those of the train split (sorted names); a val/test clip of a class
absent from train gets label -1: the probe cannot predict it, so it counts as an error
(top-1) and as a negative of every class (mAP), with a warning.
"""

from __future__ import annotations

import logging
import time

import torch
from scav.core.cache import FeatureCache
from scav.core.cli import write_json
from scav.core.device import resolve_device

from .config import ProbeConfig
from .embeddings import SplitEmbeddings, embed_labelled, labelled_clips
from .train_probe import evaluate, fit_probe

__all__ = ["ProbeConfig", "class_labels", "run"]

log = logging.getLogger(__name__)


def class_labels(labels: list[str], classes: list[str]) -> tuple[torch.Tensor, list[str]]:
    """(y (N,) int64, index in ``classes`` or -1; the distinct names not in ``classes``)."""
    index = {c: i for i, c in enumerate(classes)}
    y = torch.tensor([index.get(lab, -1) for lab in labels], dtype=torch.long)
    return y, sorted({lab for lab in labels if lab not in index})


def _split_summary(e: SplitEmbeddings, y: torch.Tensor, unseen: list[str]) -> dict:
    return {"split": e.split, "clips": len(y), "classes": len(set(e.labels)), "unlabelled_clips": e.unlabelled,
            "unusable_clips": e.unusable, "unseen_class_clips": int((y < 0).sum()), "unseen_classes": unseen}


def run(cfg: ProbeConfig) -> dict:
    """Fit the probe on train, pick its epoch on val, evaluate; also write the result to
    ``cfg.json_path``. Raises CacheError / CheckpointError / ValueError with a readable message."""
    cfg.validate()
    cache = FeatureCache.open(cfg.cache)
    roles = cfg.splits
    selections = [labelled_clips(cache, roles[r], cfg.audio_track) for r in ("train", "val", "test")]
    classes = sorted({c.label.strip() for c in selections[0].clips})
    if len(classes) < 2:
        raise ValueError(f"train split {cfg.train_split!r} has {len(classes)} class ({classes}); "
                         "a probe needs at least 2")
    device = resolve_device(cfg.device)
    emb = embed_labelled(cache, cfg.checkpoint, selections, cfg.modality, device, cfg.audio_track, cfg.embed_batch_size)

    xs, ys, summary = {}, {}, {}
    for role, split in roles.items():
        e = emb.splits[split]
        y, unseen = class_labels(e.labels, classes)
        if unseen:
            log.warning("%d clips of %s (%s) have classes absent from %s (e.g. %r): they count as errors",
                        int((y < 0).sum()), split, role, cfg.train_split, unseen[0])
        xs[role], ys[role] = torch.from_numpy(e.x), y
        summary[role] = _split_summary(e, y, unseen)

    t0 = time.perf_counter()
    res = fit_probe(xs["train"], ys["train"], xs["val"], ys["val"], kind=cfg.probe, epochs=cfg.epochs,
                    batch_size=cfg.batch_size, seed=cfg.seed, hidden=cfg.hidden, n_classes=len(classes),
                    device=device, **cfg.optim_settings())
    fit_seconds = time.perf_counter() - t0
    results = {role: evaluate(res, xs[role], ys[role]) for role in roles}
    meta = cache.meta
    out = {
        "checkpoint": str(cfg.checkpoint),
        "step": emb.ckpt_meta["step"],
        "cache": str(cfg.cache),
        "encoders": {"video": meta.video.label, "audio": meta.audio.label},
        "stand_in_encoders": bool(meta.video.stand_in or meta.audio.stand_in),
        "modality": cfg.modality,
        "audio_track": cfg.audio_track,
        "feature_dim": int(xs["train"].shape[1]),
        "probe": res.settings,
        "num_classes": len(classes),
        "classes": classes,
        "splits": summary,
        "best_epoch": res.best_epoch,
        "val_top1": results["val"]["top1"],
        "test_top1": results["test"]["top1"],
        "test_mAP": results["test"]["mAP"],
        "results": results,
        "history": res.history,
        "device": str(device),
        "embed_seconds": emb.seconds,
        "fit_seconds": fit_seconds,
    }
    write_json(cfg.json_path, out)
    return out
