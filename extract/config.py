"""What an extraction run is: which encoders (``EncoderSpec``) and every option (``ExtractConfig``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..data_manifests.manifest import ManifestRow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncoderSpec:
    """Which frozen encoders to build (picklable: sent to worker processes)."""

    video: str = "pixels"
    audio: str = "fbank"
    video_weights: str | None = None  # CLIP folder (clip-vit-b32)
    audio_weights: str | None = None  # BEATs checkpoint (beats-iter3-as2m)
    video_preprocess: str | None = None  # CLIP: "pil" | "tensor" (on the device); None: the encoder's default
    frame_batch: int = 1024  # CLIP frames per batch in encode_many (set from ExtractConfig.frame_batch)
    audio_window: int | None = None  # BEATs window in 160 ms steps (None: the encoder's default, 64)


@dataclass(frozen=True)
class ExtractConfig:
    """Everything one extraction needs; validated by :meth:`validate`, never changed."""

    manifest: Path | None  # CSV; or None when ``rows`` is given
    out: Path = Path("features.zarr")
    rows: tuple[ManifestRow, ...] | None = None  # rows instead of a manifest file
    media_root: Path | None = None  # default: the manifest's folder
    encoders: EncoderSpec = field(default_factory=EncoderSpec)
    devices: tuple[str, ...] = ("cpu",)  # one worker per device when more than one
    scheduler: str | None = None  # dask.distributed scheduler address
    shards: int | None = None  # dask only: default 2 x workers
    part_clips: int | None = None  # default: the cache layout's part_clips
    split: str | None = None  # keep only rows of this split
    as_split: str | None = None  # store every kept row under this split name
    retry_failed: bool = False  # re-try clips committed as failures earlier
    decode_threads: int = 2  # decode threads per encoder when decode_workers == 0
    decode_workers: int | None = None  # decode processes; None: cores minus one per GPU; 0: threads in-process
    prefetch: int = 4  # chunks a decode worker may have waiting for the encoder (the memory bound's factor)
    frame_batch: int = 1024  # most frames per chunk, i.e. per encoder call (also capped at 32 MB a chunk)
    progress: bool = True
    lock_timeout: float = 0.0  # seconds to wait while another run writes the cache (0: refuse at once)

    def validate(self) -> None:
        if self.manifest is None and self.rows is None:
            raise ValueError("give a manifest path or rows")
        if not self.devices:
            raise ValueError("devices must name at least one device ('cpu', 'cuda:0', ...)")
        if self.part_clips is not None and self.part_clips < 1:
            raise ValueError(f"part_clips must be >= 1, got {self.part_clips}")
        if self.decode_threads < 1 or self.prefetch < 1:
            raise ValueError("decode_threads and prefetch must be >= 1")
        if self.decode_workers is not None and self.decode_workers < 0:
            raise ValueError(f"decode_workers must be >= 0 (0: decode in threads), got {self.decode_workers}")
        if self.frame_batch < 1:
            raise ValueError(f"frame_batch must be >= 1, got {self.frame_batch}")
        if self.shards is not None and self.shards < 1:
            raise ValueError(f"shards must be >= 1, got {self.shards}")
        if self.lock_timeout < 0:
            raise ValueError(f"lock_timeout (--wait) must be >= 0 seconds, got {self.lock_timeout}")

    def n_decode_workers(self) -> int:
        """Decode processes this run starts (0: decode in threads of each encoder)."""
        if self.decode_workers is not None:
            return self.decode_workers
        from .decode_pool import default_decode_workers

        return default_decode_workers(sum(d.startswith("cuda") for d in self.devices))


def devices_for_gpus(gpus: int) -> tuple[str, ...]:
    """``--gpus N`` -> device names: N = 0 is one CPU worker."""
    if gpus < 0:
        raise ValueError(f"--gpus must be >= 0, got {gpus}")
    if gpus == 0:
        return ("cpu",)
    import torch

    available = torch.cuda.device_count()
    if available == 0:
        # The documented command (`--gpus 1`) must still run on a laptop or CI box.
        log.warning("--gpus %d: no CUDA device is visible; running one CPU worker instead", gpus)
        return ("cpu",)
    if gpus > available:
        raise ValueError(f"--gpus {gpus}: only {available} CUDA device(s) visible; use --gpus {available}")
    return tuple(f"cuda:{i}" for i in range(gpus))
