"""One way to turn a device name from the command line into a ``torch.device``."""

from __future__ import annotations

DEVICE_HELP = "auto (this process's GPU when CUDA is there, else CPU), cpu, cuda or cuda:N"


def check_device_name(name: str) -> None:
    """Raise ValueError unless ``name`` is 'auto', 'cpu', 'cuda' or 'cuda:N' (no torch import)."""
    ok = name in ("auto", "cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit())
    if not ok:
        raise ValueError(f"device must be one of {DEVICE_HELP}; got {name!r}")


def resolve_device(name: str, local_rank: int = 0):
    """'auto' -> ``cuda:<local_rank>`` when CUDA is there, else CPU; 'cuda' -> ``cuda:<local_rank>``.

    Asking for CUDA where there is none is an error, not a silent fall-back.
    """
    import torch

    check_device_name(name)
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for but CUDA is not available")
    if name == "cuda":
        return torch.device(f"cuda:{local_rank}")
    return torch.device(name)
