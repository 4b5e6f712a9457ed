"""Training curves from metrics.jsonl (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import json
from pathlib import Path

from scav.core.files import atomic_path


def plot_curves(metrics_path: str | Path, out_png: str | Path) -> Path:
    """Loss (left) and validation R@1 (right) over steps -> ``out_png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    events = [json.loads(ln) for ln in Path(metrics_path).read_text().splitlines() if ln.strip()]
    train = [e for e in events if e.get("event") == "train"]
    val = [e for e in events if e.get("event") == "val"]
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
    for key in sorted({k for e in train for k in e if k == "loss" or k.endswith("_loss")}):
        pts = [(e["step"], e[key]) for e in train if key in e]
        ax_loss.plot(*zip(*pts), label=key) if pts else None
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.legend(loc="upper right")
    for key in ("seq_a2v_r1", "seq_v2a_r1", "agg_a2v_r1", "agg_v2a_r1"):
        pts = [(e["step"], e[key]) for e in val if key in e]
        if pts:
            ax_val.plot(*zip(*pts), marker="o", label=key.replace("_r1", " R@1"))
    ax_val.set_xlabel("step")
    ax_val.set_ylabel("validation R@1")
    if val:
        ax_val.legend(loc="lower right")
    fig.tight_layout()
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:  # the temporary keeps the .png suffix matplotlib reads the format from
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return out_png
