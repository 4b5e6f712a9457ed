"""``pixels``: the parameter-free video stand-in (area-resize of each frame to 16x16, flattened)."""

from __future__ import annotations

import logging

import numpy as np
from scav.core.schema import EncoderInfo

from .base import PIXELS_SIDE, EncodeError, _check_frames, _EachAlone

log = logging.getLogger(__name__)



class PixelsEncoder(_EachAlone):
    """Parameter-free video stand-in: each frame area-resized to 16x16 RGB in [0, 1] -> 768-d."""

    def __init__(self) -> None:
        self.info = EncoderInfo(
            name="pixels",
            dim=PIXELS_SIDE * PIXELS_SIDE * 3,
            checksum=None,
            stand_in=True,
            steps_per_second=None,
            preprocessing={
                "resize": f"area to {PIXELS_SIDE}x{PIXELS_SIDE} (torch interpolate mode='area')",
                "scale": "uint8 / 255",
                "layout": "(16, 16, 3) row-major flattened",
            },
        )

    def frame_prep(self):
        """The area resize for one frame, run where frames are decoded (bit-identical to ``encode``'s)."""
        from ..frame_prep import PixelsPrep

        return PixelsPrep(PIXELS_SIDE)

    def encode_prepped(self, frames: np.ndarray) -> np.ndarray:
        """(T, 16, 16, 3) float32 (``frame_prep``'s outputs) -> (T, 768) float32."""
        x = np.asarray(frames)
        if x.ndim != 4 or x.shape[1:] != (PIXELS_SIDE, PIXELS_SIDE, 3):
            raise EncodeError("encode", f"prepared frames must be (T, 16, 16, 3), got {x.shape}")
        return x.reshape(len(x), -1).astype(np.float32)

    def encode(self, frames: np.ndarray) -> np.ndarray:
        """(T, H, W, 3) uint8 -> (T, 768) float32."""
        import torch
        import torch.nn.functional as F

        x = _check_frames(frames)
        t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float() / 255.0  # (T, 3, H, W)
        t = F.interpolate(t, size=(PIXELS_SIDE, PIXELS_SIDE), mode="area")
        return t.permute(0, 2, 3, 1).reshape(len(x), -1).numpy().astype(np.float32)
