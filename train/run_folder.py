"""The run folder and the resume point: config.json, metrics.jsonl, last.pt's state.

``--resume`` on a folder without last.pt (a run stopped before its first checkpoint)
starts the run from step 0 and logs so: nothing was saved that could be continued, and a
rerun from scratch is what that run would have done. Temporaries left by writers killed
inside a write are removed when a run starts.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from scav.core.cache import FeatureCache
from scav.core.files import remove_stale_tmp, write_json_atomic
from scav.model.checkpoint import check_cache_matches, read_checkpoint
from scav.model.network import SCAVModel

from .config import TrainConfig

log = logging.getLogger(__name__)

RESUME_MAY_DIFFER = {"resume", "device", "num_workers", "log_every", "steps"}


@dataclass
class TrainState:
    """Where a run is: saved in last.pt, so that --resume reads the batches an uninterrupted run would."""
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of `epoch` already consumed
    best: list[list[float]] = field(default_factory=list)  # [[score, step], ...], best first
    last_loss: float = math.nan


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


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
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
    opt.load_state_dict(resume["optimizer"])  # torch moves a fused group's step counts to the device
    sched.load_state_dict(resume["scheduler"])
    set_rng_state(resume["rng"], device)
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
    write_json_atomic(out / "config.json", cfg.to_dict())
    return MetricsLog(out / "metrics.jsonl", resumed_at)
