"""A video encoder's per-frame preprocessing, run where frames are decoded.

A ``FramePrep`` is a small picklable object (sent to decode workers) that turns
one decoded frame into what its encoder needs, before any frame is stacked:

- :class:`PixelsPrep` (``pixels``): area-resize to 16x16 RGB in [0, 1], float32
  (16, 16, 3) -- a numba kernel (``area_pool.py``) doing, cell by cell, the
  float32 operations of ``PixelsEncoder.encode``'s torch resize, so features are
  bit-identical (tests/test_frame_prep.py), without importing torch;
- :class:`ClipCropPrep` (CLIP): shortest side to 224 and centre crop, uint8
  (224, 224, 3). ``backend="pil"`` is transformers' PIL resize (Pillow bicubic,
  no reducing gap) and numpy crop, so the processor then sees a 224x224 image,
  which it resizes to itself (Pillow copies) and crops to itself: the pixel
  values are exactly today's. ``backend="tensor"`` runs ``clip_preprocess``'s
  kernel for the encoder's device on the worker's CPU: ``uint8`` for a CPU
  encoder (bit-identical to the ``tensor`` path before), ``float`` for CUDA
  (the same float32 passes, each rounded to grey levels, on the CPU instead of
  the GPU: within 1 level of PIL as before, tests/test_preprocess_clip.py).

Memory: a worker holds one full-resolution frame at a time; what leaves it is
at most 224x224x3 bytes (CLIP) or 3 KB (pixels) per frame, whatever the source
resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PIXELS_SIDE = 16


def _torch_one_thread():
    import torch

    if torch.get_num_threads() != 1 and _IN_WORKER:
        torch.set_num_threads(1)
    return torch


_IN_WORKER = False  # set by decode workers: one torch thread each (the pool sizes the cores)


def in_worker() -> None:
    """Called once in a decode worker: per-frame torch ops (``ClipCropPrep(backend="tensor")``) use one thread."""
    global _IN_WORKER
    _IN_WORKER = True


@dataclass(frozen=True)
class PixelsPrep:
    """(H, W, 3) uint8 -> (16, 16, 3) float32: ``PixelsEncoder``'s resize for one frame."""

    side: int = PIXELS_SIDE

    def out_shape(self, height: int, width: int) -> tuple[int, int, int]:
        return (self.side, self.side, 3)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        # numba, not torch: a decode worker for pixels never imports torch (~500 MB)
        from .area_pool import area_resize

        return area_resize(rgb, self.side)


def resized_size(height: int, width: int, shortest_edge: int) -> tuple[int, int]:
    """(new_h, new_w): short side to ``shortest_edge``, long side ``int(shortest_edge * long / short)``.

    Same arithmetic as transformers' ``get_resize_output_image_size(default_to_square=False)``. Here, not in
    ``clip_preprocess`` (which imports torch): a decode worker on the PIL path never imports torch (~500 MB).
    """
    if width <= height:
        return int(shortest_edge * height / width), shortest_edge
    return shortest_edge, int(shortest_edge * width / height)


@dataclass(frozen=True)
class ClipCropPrep:
    """(H, W, 3) uint8 -> (crop_h, crop_w, 3) uint8: CLIP's resize (shortest side) and centre crop."""

    shortest_edge: int = 224
    crop_height: int = 224
    crop_width: int = 224
    backend: str = "pil"  # "pil" | "tensor"
    kernel: str = "uint8"  # tensor: clip_preprocess's kernel, the one the encoder's device uses (uint8 CPU, float CUDA)

    def out_shape(self, height: int, width: int) -> tuple[int, int, int]:
        return (self.crop_height, self.crop_width, 3)

    def resized(self, height: int, width: int) -> tuple[int, int]:
        return resized_size(height, width, self.shortest_edge)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        H, W = rgb.shape[:2]
        h, w = self.resized(H, W)
        if self.backend == "pil":
            from PIL import Image

            img = Image.fromarray(np.ascontiguousarray(rgb), mode="RGB") if (h, w) != (H, W) else None
            x = np.asarray(img.resize((w, h), resample=Image.Resampling.BICUBIC, reducing_gap=None)) if img else rgb
        elif self.backend == "tensor":
            torch = _torch_one_thread()
            from .clip_preprocess import resize_uint8_levels

            t = torch.from_numpy(np.ascontiguousarray(rgb))[None].permute(0, 3, 1, 2)
            x = resize_uint8_levels(t, (h, w), self.kernel)[0].permute(1, 2, 0).numpy().astype(np.uint8)
        else:
            raise ValueError(f"backend must be 'pil' or 'tensor', got {self.backend!r}")
        top, left = (h - self.crop_height) // 2, (w - self.crop_width) // 2  # transformers' center_crop
        return np.ascontiguousarray(x[top : top + self.crop_height, left : left + self.crop_width])
