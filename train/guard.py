"""The guard against a non-finite loss or gradient, without a host sync per step."""

from __future__ import annotations

import torch

from . import ddp


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the message names the step and the values."""


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
