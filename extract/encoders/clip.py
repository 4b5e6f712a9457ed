"""``clip-vit-b32``: transformers' CLIP vision tower (pooled output, 768-d per frame), its
weights (a folder or a hub repository id) and its preprocessing (PIL or batched tensor)."""

from __future__ import annotations

import enum
import hashlib
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scav.core.files import sha256_file
from scav.core.schema import PROVENANCE, EncoderInfo

from .base import CLIP_REPO, EncodeError, _check_frames, _checked, _EachAlone

log = logging.getLogger(__name__)



# a Hugging Face repository id, optionally @revision: "owner/name" or "owner/name@rev"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


def _fetch_hint(repo: str) -> str:
    return (
        f"On a machine with internet the repository id downloads into the Hugging Face cache by itself "
        f"(unset HF_HUB_OFFLINE). For an offline machine: `hf download {repo}` elsewhere (huggingface_hub "
        f">= 1.0; older: `huggingface-cli download {repo}`), copy its Hugging Face cache folder here (or set "
        f"HF_HUB_CACHE/HF_HOME to it) and set HF_HUB_OFFLINE=1, or pass the snapshot folder itself. "
        f"See docs/WEIGHTS.md."
    )


# what CLIPVisionModel + its image processor read; the repository also holds TF/JAX weights we never load
_HUB_FILES = ["*.json", "*.txt", "*.safetensors"]
_HUB_FALLBACK_WEIGHTS = ["pytorch_model*.bin"]  # repositories without safetensors, as transformers falls back


def _from_hf_cache(repo: str) -> tuple[Path, str]:
    """(snapshot folder, commit) of ``repo[@revision]`` as transformers loads a repository id: fetched
    through the Hugging Face hub into its cache on a machine with internet (only the files above);
    from the local cache alone when ``HF_HUB_OFFLINE`` is set or the hub cannot be reached."""
    from huggingface_hub import constants, snapshot_download

    repo_id, _, revision = repo.partition("@")
    try:
        d = Path(snapshot_download(repo_id, revision=revision or None, allow_patterns=_HUB_FILES))
        if not any(d.glob("*.safetensors")):
            d = Path(snapshot_download(repo_id, revision=revision or None, allow_patterns=_HUB_FALLBACK_WEIGHTS))
    except Exception as e:  # not on the hub, no network and not cached, offline and not cached, ...
        offline = "; HF_HUB_OFFLINE is set, so only that cache was looked at" if constants.HF_HUB_OFFLINE else ""
        raise FileNotFoundError(
            f"{repo} could not be loaded from the Hugging Face hub nor from the local cache "
            f"({constants.HF_HUB_CACHE}{offline}): {type(e).__name__}. {_fetch_hint(repo_id)}"
        ) from None
    return d, d.name  # HF cache layout: .../snapshots/<commit>


def _resolve_clip_dir(weights: str | os.PathLike | None) -> tuple[Path, dict[str, Any]]:
    """The local folder holding the CLIP files, and where it came from.

    ``weights`` is a folder (transformers format), a Hugging Face repository id
    (``owner/name[@revision]``, loaded as transformers does: downloaded into the HF
    cache with internet, from that cache when ``HF_HUB_OFFLINE`` is set), or None for
    ``openai/clip-vit-base-patch32`` the same way.
    """
    if weights is None:
        d, commit = _from_hf_cache(CLIP_REPO)
        return d, {"source": CLIP_REPO, "revision": commit}
    text = os.fspath(weights)
    d = Path(text).expanduser()
    if d.is_dir():
        revision = d.name if d.parent.name == "snapshots" else None  # a folder inside an HF cache
        return d, {"source": "local folder", "revision": revision}
    if d.exists():
        raise FileNotFoundError(f"CLIP weights must be a folder (transformers format) or a repository id, got file {d}")
    if _REPO_ID.match(text) and not text.startswith("."):
        folder, commit = _from_hf_cache(text)
        return folder, {"source": text.partition("@")[0], "revision": commit}
    raise FileNotFoundError(
        f"CLIP weights folder not found: {d} (nor is it a Hugging Face repository id such as {CLIP_REPO}). "
        f"{_fetch_hint(CLIP_REPO)}"
    )


def _weight_files(d: Path) -> list[Path]:
    files = sorted(d.glob("*.safetensors")) or sorted(d.glob("pytorch_model*.bin"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors or pytorch_model*.bin weights in {d}")
    return files


def checksum_files(files: list[Path]) -> str:
    """sha256 of one file, or of the lines 'name sha256' of several (sorted by name)."""
    if len(files) == 1:
        return sha256_file(files[0])
    lines = "".join(f"{f.name} {sha256_file(f)}\n" for f in sorted(files, key=lambda p: p.name))
    return hashlib.sha256(lines.encode()).hexdigest()


def _load_image_processor(d: Path):
    """CLIP's image processor, always the PIL backend.

    transformers 5 picks the torchvision backend for ``CLIPImageProcessor`` whenever
    torchvision is importable and silently falls back to PIL otherwise; the two resize
    differently (measured: up to 1 grey level on some pixels, max |diff| 0.015 of the
    normalised input), so installing torchvision would change features. OpenAI's
    reference preprocessing resizes PIL images (bicubic): pin that backend.
    """
    try:
        from transformers import CLIPImageProcessorPil as Processor  # transformers >= 5
    except ImportError:  # transformers 4: CLIPImageProcessor is the PIL one
        from transformers import CLIPImageProcessor as Processor
    return Processor.from_pretrained(str(d), local_files_only=True)


CLIP_PREPROCESS = ("pil", "tensor")
TENSOR_RESIZE = "torch: PIL-style two-pass antialiased bicubic (horizontal then vertical), uint8 levels after each pass"


class ClipVisionEncoder:
    """transformers CLIP vision tower: one pooled vector (``pooler_output``) per frame.

    ``preprocess``: ``"pil"`` (transformers' PIL CLIP image processor, per frame on
    the CPU: the reference, and what every cache so far was written with) or
    ``"tensor"`` (``clip_preprocess.py``: the same recipe as batched tensor
    operations on ``device``; resized pixels within 2 grey levels of PIL's, feature
    cosine > 0.9999 — see its docstring). The choice changes pixel values, so it is
    part of the encoder's identity (``info.preprocessing["resize_backend"]``): a
    cache never mixes the two.

    ``encode(frames)`` runs one clip in batches of ``batch_size`` frames.
    ``encode_many(clips)`` with ``pack`` packs the frames of several clips into
    batches of ``frame_batch`` frames; without, it is ``encode`` per clip. ``pack``
    defaults to True on CUDA (full batches keep the GPU busy) and False on CPU,
    where batch size hardly changes throughput and per-clip batches keep CPU
    caches bit-identical to ``encode``'s (packing changes float32 rounding there).
    On CUDA the vision tower runs under float16 autocast, on CPU in float32.
    """

    def __init__(
        self,
        weights=None,
        device: str = "cpu",
        batch_size: int = 64,
        name: str = "clip-vit-b32",
        preprocess: str = "pil",
        frame_batch: int = 1024,
        pack: bool | None = None,
    ):
        import torch
        import transformers
        from transformers import CLIPVisionModel

        if preprocess not in CLIP_PREPROCESS:
            raise ValueError(f"preprocess must be one of {CLIP_PREPROCESS}, got {preprocess!r}")
        if batch_size < 1 or frame_batch < 1:
            raise ValueError(f"batch_size and frame_batch must be >= 1, got {batch_size}, {frame_batch}")
        d, origin = _resolve_clip_dir(weights)
        self.folder = d
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.frame_batch = int(frame_batch)
        self.pack = (self.device.type == "cuda") if pack is None else bool(pack)
        self.preprocess_mode = preprocess
        self.processor = _load_image_processor(d)
        self.model = CLIPVisionModel.from_pretrained(str(d), local_files_only=True).to(self.device).eval()
        cfg = self.model.config
        proc = self.processor
        self.amp_dtype = torch.float16 if self.device.type == "cuda" else None
        tensor_info: dict[str, Any] = {}
        if preprocess == "tensor":
            from ..clip_preprocess import ClipPreprocessSpec, default_kernel

            self.spec = ClipPreprocessSpec.from_processor(proc)  # refuses anything but the CLIP recipe
            self.kernel = default_kernel(self.device)
            # frames per resize call: small on CPU (stays in cache), larger on a GPU (fewer launches)
            self.preprocess_chunk = 32 if self.device.type == "cpu" else 256
            # scav-extract resizes in its decode workers (frame_prep: the uint8 kernel on their CPUs)
            tensor_info = {"tensor_kernel": f"{self.kernel} ({self.device.type})",
                           "extract_resize": "the same kernel on the decode workers' CPUs (frame_prep)"}
        self.info = EncoderInfo(
            name=name,
            dim=int(cfg.hidden_size),
            checksum=checksum_files(_weight_files(d)),
            stand_in=False,
            steps_per_second=None,
            preprocessing={
                # numeric preprocessing: what changes pixel values (fingerprinted)
                "resize_backend": "PIL" if preprocess == "pil" else TENSOR_RESIZE,
                "resample": _jsonable(getattr(proc, "resample", None)),  # 3 = bicubic
                "do_resize": _jsonable(getattr(proc, "do_resize", None)),
                "do_center_crop": _jsonable(getattr(proc, "do_center_crop", None)),
                "do_rescale": _jsonable(getattr(proc, "do_rescale", None)),
                "rescale_factor": _jsonable(getattr(proc, "rescale_factor", None)),
                "do_normalize": _jsonable(getattr(proc, "do_normalize", None)),
                "size": _jsonable(getattr(proc, "size", None)),
                "crop_size": _jsonable(getattr(proc, "crop_size", None)),
                "image_mean": _jsonable(getattr(proc, "image_mean", None)),
                "image_std": _jsonable(getattr(proc, "image_std", None)),
                "image_size": int(cfg.image_size),
                "patch_size": int(cfg.patch_size),
                "num_hidden_layers": int(cfg.num_hidden_layers),
                "output": "pooler_output (post-layernorm CLS), no projection",
                "autocast": "float16 on CUDA, float32 on CPU",
                PROVENANCE: {  # recorded, not fingerprinted: does not change features
                    **origin,
                    "transformers": transformers.__version__,
                    "torch": torch.__version__,
                    "processor": type(proc).__name__,
                    **tensor_info,  # the uint8 (CPU) and float (CUDA) kernels agree within 1-2 grey levels
                },
            },
        )

    def preprocess(self, frames: np.ndarray) -> torch.Tensor:  # noqa: F821
        """(T, H, W, 3) uint8 -> pixel_values (T, 3, S, S) float32 (on ``device`` for ``"tensor"``)."""
        import torch

        if self.preprocess_mode == "pil":
            # channels_last stated: transformers guesses channels-first for frames 1, 3 or 4 pixels high
            return self.processor(images=list(frames), input_data_format="channels_last", return_tensors="pt")[
                "pixel_values"
            ]
        from ..clip_preprocess import preprocess_frames

        x = torch.from_numpy(np.ascontiguousarray(frames))
        parts = [
            preprocess_frames(x[i : i + self.preprocess_chunk].to(self.device, non_blocking=True), self.spec, self.kernel)
            for i in range(0, len(x), self.preprocess_chunk)
        ]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def frame_prep(self):
        """Resize (shortest side) + centre crop of one frame with this encoder's resize backend, run where
        frames are decoded; None if the processor is not the CLIP recipe (frames then come whole).

        ``pil``: the processor then sees 224x224 images and leaves them as they are (Pillow's resize to
        the same size is a copy): features bit-identical to ``encode`` on full frames. ``tensor``: the
        kernel this device uses (uint8 on CPU, float on CUDA) run on the worker's CPU, so the device
        only normalises and runs the model: on CPU bit-identical to ``encode``; on CUDA the float
        kernel's arithmetic on a CPU instead of the GPU (within 1 grey level of PIL, as before)."""
        from ..clip_preprocess import ClipPreprocessSpec
        from ..frame_prep import ClipCropPrep

        try:
            spec = ClipPreprocessSpec.from_processor(self.processor)
        except ValueError:
            return None
        kernel = getattr(self, "kernel", "uint8")  # tensor: the kernel this device uses, run on the worker's CPU
        return ClipCropPrep(spec.shortest_edge, spec.crop_height, spec.crop_width, backend=self.preprocess_mode,
                            kernel=kernel)

    def encode_prepped(self, frames: np.ndarray) -> np.ndarray:
        """(T, crop, crop, 3) uint8 (``frame_prep``'s outputs) -> (T, hidden) float32."""
        return self.encode(frames)

    def _forward(self, pix: torch.Tensor) -> np.ndarray:  # noqa: F821
        """pixel_values (b, 3, S, S) -> (b, hidden) float32 numpy (one device sync per call)."""
        import torch

        with torch.inference_mode():
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                pooled = self.model(pixel_values=pix.to(self.device, non_blocking=True)).pooler_output  # (b, hidden)
            return pooled.float().cpu().numpy()

    def encode(self, frames: np.ndarray) -> np.ndarray:
        """(T, H, W, 3) uint8 -> (T, hidden) float32, one clip in batches of ``batch_size`` frames."""
        x = _check_frames(frames)
        out = [self._forward(self.preprocess(x[i : i + self.batch_size])) for i in range(0, len(x), self.batch_size)]
        return np.concatenate(out).astype(np.float32, copy=False)

    def encode_many(
        self, clips: Sequence[np.ndarray], frame_batch: int | None = None, pack: bool | None = None
    ) -> list[np.ndarray | EncodeError]:
        """[(T_i, H_i, W_i, 3) uint8] -> [(T_i, hidden) float32 | EncodeError], one per clip, in order.

        Packed (``pack``, default ``self.pack``): batches of ``frame_batch``
        (default ``self.frame_batch``) frames from consecutive clips of any sizes
        (each clip preprocessed at its own size); a clip may span batches. A
        frame's features do not depend on its batch mates, but matrix kernels round
        differently for other batch shapes: versus ``encode`` per clip, float32
        rounding on CPU (tests/test_encoders_batching.py), float16 rounding on
        CUDA. Not packed: exactly ``encode`` per clip. An invalid clip gets its
        ``EncodeError`` in its place; the others still run.
        """
        import torch

        from ..batching import pack_frames

        if not (self.pack if pack is None else pack):
            return _EachAlone.encode_many(self, clips)
        out, valid = _checked(clips, _check_frames)
        order = sorted(valid)
        lengths = [len(valid[i]) for i in order]
        pieces: dict[int, list[np.ndarray]] = {i: [] for i in order}
        for batch in pack_frames(lengths, int(frame_batch or self.frame_batch)):
            pix = [self.preprocess(valid[order[k]][a:b]) for k, a, b in batch]  # each (b - a, 3, S, S)
            feats = self._forward(pix[0] if len(pix) == 1 else torch.cat([p.to(self.device) for p in pix]))
            row = 0
            for k, a, b in batch:
                pieces[order[k]].append(feats[row : row + b - a])
                row += b - a
        for i in order:
            out[i] = np.concatenate(pieces[i]).astype(np.float32, copy=False)
        return out  # type: ignore[return-value]


def _jsonable(v):
    if isinstance(v, enum.Enum):  # e.g. PILImageResampling.BICUBIC -> 3
        return _jsonable(v.value)
    if v is None or isinstance(v, (int, float, str, bool)):
        return v
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if hasattr(v, "items"):  # transformers SizeDict
        return {str(k): _jsonable(x) for k, x in v.items() if x is not None}
    try:
        return {k: _jsonable(x) for k, x in vars(v).items() if x is not None}
    except TypeError:
        return str(v)
