"""Linear / MLP probes on frozen clip embeddings (pure torch; the dubs paper §4, App. B.3).

:func:`fit_probe` standardises the features with the train split's mean and std, trains a
single-label classifier (cross-entropy) with a cosine learning-rate decay to 0, measures val
top-1 after every epoch and keeps the weights of the best one (ties -> the earliest).
:func:`evaluate` reports top-1 and mAP (:mod:`.metrics`) of a fitted probe on any split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .config import OPTIMIZER_DEFAULTS, OPTIMIZERS, PROBES
from .metrics import mean_average_precision, top1


@dataclass
class ProbeResult:
    """A fitted probe (weights of the best val epoch, on the CPU, eval mode) and how it got there.

    mean / std (D,): the train statistics the inputs are standardised with.
    history: per epoch {'epoch', 'train_loss', 'val_top1'}; best_epoch is 1-based.
    """

    model: nn.Module
    mean: torch.Tensor
    std: torch.Tensor
    best_epoch: int
    best_val_top1: float
    history: list[dict] = field(default_factory=list)
    settings: dict = field(default_factory=dict)  # kind, optimizer, lr, ... as used

    @torch.no_grad()
    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N, K) of raw features x (N, D)."""
        return torch.softmax(self.model(_standardise(x.float(), self.mean, self.std)), dim=1)


def _standardise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (x - mean) / std


def build_probe(kind: str, dim: int, n_classes: int, hidden: int = 512, dropout: float = 0.1) -> nn.Module:
    """linear: one affine layer; mlp: Linear -> ReLU -> Dropout -> Linear (one hidden layer)."""
    if kind == "linear":
        return nn.Linear(dim, n_classes)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_classes))
    raise ValueError(f"probe kind must be one of {PROBES}, got {kind!r}")


def _optimizer(name: str, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def _check(x: torch.Tensor, y: torch.Tensor, what: str) -> None:
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"{what}: expected features (N, D) and labels (N,) with N >= 1, "
                         f"got {tuple(x.shape)}, {tuple(y.shape)}")


def fit_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    *,
    kind: str = "linear",
    epochs: int = 100,
    lr: float | None = None,
    weight_decay: float | None = None,
    optimizer: str | None = None,
    batch_size: int = 256,
    seed: int = 0,
    hidden: int = 512,
    dropout: float = 0.1,
    n_classes: int | None = None,
    device: str | torch.device = "cpu",
) -> ProbeResult:
    """Fit a probe: train_x (N, D) float, train_y (N,) int in [0, K); val_x (M, D), val_y (M,)
    (-1 = a class absent from train: always an error).

    K = n_classes, else max(train_y) + 1. lr / weight_decay / optimizer None = the kind's
    defaults (:data:`scav.probe.config.OPTIMIZER_DEFAULTS`). The same seed gives the same
    weights (the caller's RNG state is left as it was). ValueError if the loss diverges.
    """
    if kind not in PROBES:
        raise ValueError(f"probe kind must be one of {PROBES}, got {kind!r}")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch size must be >= 1, got {epochs}, {batch_size}")
    _check(train_x, train_y, "train")
    _check(val_x, val_y, "val")
    if train_y.min() < 0:
        raise ValueError("train labels must be class indices >= 0")
    k = int(train_y.max()) + 1 if n_classes is None else n_classes
    if int(train_y.max()) >= k:
        raise ValueError(f"train labels reach {int(train_y.max())}, but n_classes is {k}")
    d = OPTIMIZER_DEFAULTS[kind]
    optimizer = optimizer or d["optimizer"]
    lr = d["lr"] if lr is None else lr
    weight_decay = d["weight_decay"] if weight_decay is None else weight_decay
    settings = dict(kind=kind, optimizer=optimizer, lr=lr, weight_decay=weight_decay, epochs=epochs,
                    batch_size=batch_size, seed=seed, hidden=hidden if kind == "mlp" else None,
                    dropout=dropout if kind == "mlp" else None)

    dev = torch.device(device)
    train_x = train_x.float()
    mean = train_x.mean(0)
    std = train_x.std(0, unbiased=False)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))  # a constant feature carries nothing: leave it at 0
    xt = _standardise(train_x, mean, std).to(dev)
    xv = _standardise(val_x.float(), mean, std).to(dev)
    yt, yv = train_y.long().to(dev), val_y.long().to(dev)

    devices = [dev.index or 0] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # seeded init, shuffles and dropout; caller's RNG untouched
        torch.manual_seed(seed)
        model = build_probe(kind, xt.shape[1], k, hidden, dropout).to(dev)
        opt = _optimizer(optimizer, model.parameters(), lr, weight_decay)
        steps_per_epoch = math.ceil(len(xt) / batch_size)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
        loss_fn = nn.CrossEntropyLoss()
        best, best_state, history = -1.0, None, []
        for epoch in range(1, epochs + 1):
            model.train()
            perm = torch.randperm(len(xt)).to(dev)
            total = 0.0
            for i in range(0, len(xt), batch_size):
                idx = perm[i : i + batch_size]
                loss = loss_fn(model(xt[idx]), yt[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item() * len(idx)
            if not math.isfinite(total):
                raise ValueError(f"the {kind} probe diverged in epoch {epoch} (loss {total}); "
                                 f"try a smaller lr than {lr}")
            model.eval()
            with torch.no_grad():
                val_top1 = top1(model(xv), yv)
            history.append({"epoch": epoch, "train_loss": total / len(xt), "val_top1": val_top1})
            if val_top1 > best:  # strictly better: ties keep the earliest epoch
                best = val_top1
                best_state = {n: t.detach().clone() for n, t in model.state_dict().items()}
                best_epoch = epoch
    model.load_state_dict(best_state)
    return ProbeResult(model.cpu().eval(), mean, std, best_epoch, best, history, settings)


def evaluate(result: ProbeResult, x: torch.Tensor, y: torch.Tensor) -> dict[str, float | None]:
    """{'top1', 'mAP'} (fractions) of a fitted probe on features x (N, D), labels y (N,)
    (-1 = a class the probe never saw: a top-1 error, a negative for every class).
    mAP: mean over the classes present in y of one-vs-rest AP of the softmax scores."""
    s = result.scores(x)
    y = y.long()
    return {"top1": top1(s, y), "mAP": mean_average_precision(s, y)}
