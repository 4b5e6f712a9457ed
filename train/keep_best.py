"""Checkpoint keeping: validate, keep the ``keep_best`` best steps, write last.pt, and at
the end average the best into averaged.pt (what the paper evaluates) and draw curves.png."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from scav.model.checkpoint import average_state_dicts, make_payload, save_checkpoint

from . import ddp
from .validation import selection_score, validate

if TYPE_CHECKING:
    from .loop import Training

log = logging.getLogger(__name__)


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


def finish(t: Training) -> dict:
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
