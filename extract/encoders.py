"""Frozen encoders: decoded frames / 16 kHz audio -> one feature vector per step.

Video encoders take frames (T, H, W, 3) uint8 RGB and return (T, D) float32, one
vector per frame (the steps are the container's frames). Audio encoders take
samples (N,) float32 mono 16 kHz in [-1, 1] and return (S, D) float32 with

    n_fbank = 1 + (N - 400) // 160     (Kaldi framing, 25 ms / 10 ms, snip_edges)
    S       = n_fbank // 16            (16 fbank frames = 160 ms per step, 6.25 steps/s)

so a 10 s clip -> 998 fbank frames -> 62 steps. A clip too short for one step
raises ``EncodeError`` (never an empty array).

Names: ``pixels`` and ``fbank`` are parameter-free stand-ins for the offline
demo and the tests; ``clip-vit-b32`` (transformers CLIP vision tower, pooled
output) and ``beats-iter3-as2m`` (official BEATs iter3+ AS2M checkpoint run
through speechbrain's implementation, last hidden states, 8 frequency patches
stacked per time step) are the real ones. The paper used the fine-tuned
``BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt`` with its classifier head
discarded; the self-supervised ``BEATs_iter3_plus_AS2M.pt`` is accepted too, and
the cache records which one (``variant``). Where the weights come from:
docs/WEIGHTS.md.

Every encoder carries an ``EncoderInfo`` that the cache stores, so every feature
records what produced it. Its ``preprocessing`` holds what changes features
(weights are identified by ``checksum``, the sha256); library versions, file
names and where the weights came from go under ``preprocessing["provenance"]``,
recorded but left out of the cache fingerprint (``CacheMeta.fingerprint``), so
upgrading a library or renaming a file does not lock a cache.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import os
import re
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from scav.core.files import sha256_file
from scav.core.schema import PROVENANCE, EncoderInfo

log = logging.getLogger(__name__)

AUDIO_RATE = 16000
FBANK_WIN = 400  # 25 ms at 16 kHz
FBANK_HOP = 160  # 10 ms at 16 kHz
FBANK_BINS = 128
FRAMES_PER_STEP = 16  # BEATs patch height: 16 fbank frames = 160 ms
AUDIO_STEPS_PER_SECOND = AUDIO_RATE / FBANK_HOP / FRAMES_PER_STEP  # 6.25
BEATS_FBANK_MEAN = 15.41663
BEATS_FBANK_STD = 6.55582
PIXELS_SIDE = 16
CLIP_REPO = "openai/clip-vit-base-patch32"
# the checkpoint the paper used ("iter3+ (AS2M) (cpt2)", classifier head discarded)
BEATS_PAPER_CKPT = "BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt"
BEATS_PRETRAINED_CKPT = "BEATs_iter3_plus_AS2M.pt"  # self-supervised only, no head: accepted, not the paper's
BEATS_VARIANTS = {"finetuned": BEATS_PAPER_CKPT, "pretrained": BEATS_PRETRAINED_CKPT}

VIDEO_ENCODERS = ("pixels", "clip-vit-b32")
AUDIO_ENCODERS = ("fbank", "beats-iter3-as2m")


class EncodeError(Exception):
    """Input an encoder cannot turn into features (e.g. audio shorter than one step)."""

    def __init__(self, stage: str, reason: str):
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason


class VideoEncoder(Protocol):
    info: EncoderInfo

    def encode(self, frames: np.ndarray) -> np.ndarray:  # (T, H, W, 3) uint8 -> (T, D) float32
        ...

    def encode_many(self, clips: Sequence[np.ndarray]) -> list[np.ndarray | EncodeError]:
        ...


class AudioEncoder(Protocol):
    info: EncoderInfo

    def encode(self, samples: np.ndarray) -> np.ndarray:  # (N,) float32 -> (S, D) float32
        ...

    def encode_many(self, clips: Sequence[np.ndarray]) -> list[np.ndarray | EncodeError]:
        ...


def _checked(clips, check) -> tuple[list, dict[int, np.ndarray]]:
    """(outputs with each invalid clip's EncodeError in place, {index: checked array} of the rest)."""
    out: list[np.ndarray | EncodeError | None] = [None] * len(clips)
    valid: dict[int, np.ndarray] = {}
    for i, c in enumerate(clips):
        try:
            valid[i] = check(c)
        except EncodeError as e:
            out[i] = e
    return out, valid


def encode_each_alone(enc, clips: Sequence[np.ndarray], catch: type[BaseException] = EncodeError) -> list:
    """One output per clip, in order: ``enc.encode(clip)``, or the ``catch`` exception it raised
    (so an error lands on its own clip and the others still run)."""
    out: list = []
    for x in clips:
        try:
            out.append(enc.encode(x))
        except catch as e:
            out.append(e)
    return out


class _EachAlone:
    """``encode_many`` for encoders that gain nothing from batching clips: each clip alone."""

    def encode_many(self, clips: Sequence[np.ndarray]) -> list[np.ndarray | EncodeError]:
        """One output per clip, in order: ``encode(clip)``, or the ``EncodeError`` it raised."""
        return encode_each_alone(self, clips)


# ---------------------------------------------------------------------------- helpers


def audio_steps(n_samples: int) -> int:
    """Steps an audio encoder gives for ``n_samples`` at 16 kHz (0 if under one fbank frame)."""
    if n_samples < FBANK_WIN:
        return 0
    return (1 + (n_samples - FBANK_WIN) // FBANK_HOP) // FRAMES_PER_STEP


def _check_audio(samples: np.ndarray) -> np.ndarray:
    x = np.asarray(samples)
    if x.ndim != 1:
        raise EncodeError("encode", f"audio must be (N,) mono samples, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise EncodeError("encode", "audio has NaN or infinite samples")
    if audio_steps(len(x)) == 0:
        need = FBANK_WIN + (FRAMES_PER_STEP - 1) * FBANK_HOP
        raise EncodeError(
            "encode",
            f"audio too short for one step: {len(x)} samples ({len(x) / AUDIO_RATE:.3f} s), "
            f"need >= {need} ({need / AUDIO_RATE:.3f} s)",
        )
    return x.astype(np.float32, copy=False)


def _check_frames(frames: np.ndarray) -> np.ndarray:
    x = np.asarray(frames)
    if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != np.uint8:
        raise EncodeError("encode", f"frames must be (T, H, W, 3) uint8, got {x.shape} {x.dtype}")
    if x.shape[0] == 0:
        raise EncodeError("encode", "no frames to encode")
    return x


def fbank_features(samples: np.ndarray) -> "torch.Tensor":  # noqa: F821
    """BEATs' fbank: (N,) float32 in [-1, 1] -> (n_fbank, 128) normalised, as BEATs computes it."""
    import torch
    import torchaudio.compliance.kaldi as kaldi

    wav = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))[None] * 2**15
    fb = kaldi.fbank(
        wav, num_mel_bins=FBANK_BINS, sample_frequency=AUDIO_RATE, frame_length=25, frame_shift=10
    )
    return (fb - BEATS_FBANK_MEAN) / (2 * BEATS_FBANK_STD)


FBANK_PREPROCESSING: dict[str, Any] = {
    "sample_rate": AUDIO_RATE,
    "fbank": "torchaudio.compliance.kaldi.fbank",
    "num_mel_bins": FBANK_BINS,
    "frame_length_ms": 25,
    "frame_shift_ms": 10,
    "snip_edges": True,
    "dither": 0.0,
    "waveform_scale": 2**15,
    "normalise": "(fbank - 15.41663) / (2 * 6.55582)",
    "frames_per_step": FRAMES_PER_STEP,
    "steps_rule": "n_fbank = 1 + (N - 400) // 160; steps = n_fbank // 16 (tail dropped)",
}


# ---------------------------------------------------------------------------- stand-ins


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

    def encode(self, frames: np.ndarray) -> np.ndarray:
        """(T, H, W, 3) uint8 -> (T, 768) float32."""
        import torch
        import torch.nn.functional as F

        x = _check_frames(frames)
        t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float() / 255.0  # (T, 3, H, W)
        t = F.interpolate(t, size=(PIXELS_SIDE, PIXELS_SIDE), mode="area")
        return t.permute(0, 2, 3, 1).reshape(len(x), -1).numpy().astype(np.float32)


class FbankEncoder(_EachAlone):
    """Parameter-free audio stand-in: BEATs' fbank, 16 frames per step stacked time-major -> 2048-d.

    Stacking (not averaging) keeps where an onset falls inside a 160 ms step.
    """

    def __init__(self) -> None:
        self.info = EncoderInfo(
            name="fbank",
            dim=FRAMES_PER_STEP * FBANK_BINS,
            checksum=None,
            stand_in=True,
            steps_per_second=AUDIO_STEPS_PER_SECOND,
            preprocessing={**FBANK_PREPROCESSING, "stacking": "step s = fbank frames 16s..16s+15, (16, 128) flattened time-major"},
        )

    def encode(self, samples: np.ndarray) -> np.ndarray:
        """(N,) float32 16 kHz -> (S, 2048) float32, S = (1 + (N - 400) // 160) // 16."""
        x = _check_audio(samples)
        fb = fbank_features(x)  # (n_fbank, 128)
        s = fb.shape[0] // FRAMES_PER_STEP
        return fb[: s * FRAMES_PER_STEP].reshape(s, FRAMES_PER_STEP * FBANK_BINS).numpy().astype(np.float32)


# ---------------------------------------------------------------------------- CLIP


# a Hugging Face repository id, optionally @revision: "owner/name" or "owner/name@rev"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


def _fetch_hint(repo: str) -> str:
    return (
        f"On a machine with internet: `hf download {repo}` (huggingface_hub >= 1.0; older: "
        f"`huggingface-cli download {repo}`), then copy its Hugging Face cache folder here (or set "
        f"HF_HUB_CACHE/HF_HOME to it), or pass the snapshot folder itself. See docs/WEIGHTS.md."
    )


def _from_hf_cache(repo: str) -> tuple[Path, str]:
    """(snapshot folder, commit) of ``repo[@revision]`` from the local Hugging Face cache; never downloads."""
    from huggingface_hub import constants, snapshot_download

    repo_id, _, revision = repo.partition("@")
    try:
        d = Path(snapshot_download(repo_id, revision=revision or None, local_files_only=True))
    except Exception as e:  # LocalEntryNotFoundError and friends: not cached, and we do not download
        raise FileNotFoundError(
            f"{repo} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and SCAV never "
            f"downloads ({type(e).__name__}). {_fetch_hint(repo_id)}"
        ) from None
    return d, d.name  # HF cache layout: .../snapshots/<commit>


def _resolve_clip_dir(weights: str | os.PathLike | None) -> tuple[Path, dict[str, Any]]:
    """The local folder holding the CLIP files, and where it came from.

    ``weights`` is a folder (transformers format), a Hugging Face repository id
    (``owner/name[@revision]``) looked up in the local HF cache only, or None for
    ``openai/clip-vit-base-patch32`` from that cache. Nothing is ever downloaded.
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
            from .clip_preprocess import ClipPreprocessSpec, default_kernel

            self.spec = ClipPreprocessSpec.from_processor(proc)  # refuses anything but the CLIP recipe
            self.kernel = default_kernel(self.device)
            # frames per resize call: small on CPU (stays in cache), larger on a GPU (fewer launches)
            self.preprocess_chunk = 32 if self.device.type == "cpu" else 256
            tensor_info = {"tensor_kernel": f"{self.kernel} ({self.device.type})"}
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

    def preprocess(self, frames: np.ndarray) -> "torch.Tensor":  # noqa: F821
        """(T, H, W, 3) uint8 -> pixel_values (T, 3, S, S) float32 (on ``device`` for ``"tensor"``)."""
        import torch

        if self.preprocess_mode == "pil":
            # channels_last stated: transformers guesses channels-first for frames 1, 3 or 4 pixels high
            return self.processor(images=list(frames), input_data_format="channels_last", return_tensors="pt")[
                "pixel_values"
            ]
        from .clip_preprocess import preprocess_frames

        x = torch.from_numpy(np.ascontiguousarray(frames))
        parts = [
            preprocess_frames(x[i : i + self.preprocess_chunk].to(self.device, non_blocking=True), self.spec, self.kernel)
            for i in range(0, len(x), self.preprocess_chunk)
        ]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _forward(self, pix: "torch.Tensor") -> np.ndarray:  # noqa: F821
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

        from .batching import pack_frames

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


# ---------------------------------------------------------------------------- BEATs


def load_beats_checkpoint(path: str | os.PathLike, expected_sha256: str | None = None) -> tuple[dict, str, str]:
    """Read an official-format BEATs checkpoint ``{'cfg', 'model'}`` safely; return (cfg, sha256, variant).

    ``variant`` is ``"finetuned"`` (cfg ``finetuned_model`` and a ``predictor.*``
    classifier head, like the paper's ``BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt``)
    or ``"pretrained"`` (self-supervised, no head, like ``BEATs_iter3_plus_AS2M.pt``).
    Refuses files without ``cfg`` (the default config loads silently and gives
    near-random features), files whose cfg and weights disagree about the head,
    and files whose sha256 differs from ``expected_sha256``.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"BEATs checkpoint not found: {path} (the paper's is {BEATS_PAPER_CKPT}; see docs/WEIGHTS.md)"
        )
    digest = sha256_file(path)
    if expected_sha256 is not None and digest != expected_sha256.lower():
        raise ValueError(f"BEATs checkpoint {path} has sha256 {digest}, expected {expected_sha256}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("cfg"), dict) or "model" not in ckpt:
        raise ValueError(f"{path} is not an official BEATs checkpoint: expected a dict with 'cfg' and 'model'")
    cfg = ckpt["cfg"]
    has_head = any(str(k).startswith("predictor.") for k in ckpt["model"])
    if bool(cfg.get("finetuned_model", False)) != has_head:
        raise ValueError(
            f"{path}: cfg finetuned_model={cfg.get('finetuned_model')!r} but the weights "
            f"{'have' if has_head else 'lack'} a classifier head (predictor.*): not a released BEATs checkpoint"
        )
    return cfg, digest, ("finetuned" if has_head else "pretrained")


class BeatsEncoder:
    """Official BEATs checkpoint through speechbrain's BEATs; last hidden states, 8 patches stacked.

    Tokens are 16x16 patches over (time x 128 mel bins), flattened time-first, so
    token ``t * 8 + p`` is time step t, frequency patch p; step t of the output is
    ``concat_p token[t * 8 + p]`` -> 8 * 768 = 6144-d. Zero padding changes the
    valid frames too (PITFALLS), so clips are never padded: ``encode_many`` batches
    only clips of exactly equal sample count, up to ``clip_batch`` per call, which
    gives each clip's features as if it ran alone up to float32 rounding (matrix
    kernels round by batch shape; CPU: 0 on the tiny test model, max |diff| 4e-6
    on a full-size iter3 with features of std ~1). Runs in float32 (the fbank and
    deep-norm residuals are precision-sensitive).

    Either released iter3+ AS2M checkpoint loads; a fine-tuned one's AS-2M
    classifier head is discarded, as in the paper (the reference code's
    ``extract_features`` returns only class probabilities when a head is present;
    speechbrain's computes them next to the hidden states). ``info.preprocessing
    ["variant"]`` says which checkpoint it was.
    """

    def __init__(
        self,
        weights,
        device: str = "cpu",
        expected_sha256: str | None = None,
        name: str = "beats-iter3-as2m",
        clip_batch: int = 32,
    ):
        import torch
        from speechbrain.lobes.models.beats import BEATs

        if weights is None:
            raise FileNotFoundError(
                f"{name} needs a BEATs checkpoint file as weights (--beats-ckpt / SCAV_BEATS_CKPT), never "
                f"downloaded: the paper's is {BEATS_PAPER_CKPT} (see docs/WEIGHTS.md)"
            )
        if clip_batch < 1:
            raise ValueError(f"clip_batch must be >= 1, got {clip_batch}")
        self.clip_batch = int(clip_batch)
        cfg, digest, variant = load_beats_checkpoint(weights, expected_sha256)
        if variant != "finetuned":
            log.warning(
                "%s is the self-supervised BEATs checkpoint (no classifier head); the paper used the fine-tuned "
                "%s, whose features differ", Path(weights).name, BEATS_PAPER_CKPT,
            )
        # speechbrain builds the architecture from checkpoint['cfg'] (torch.load defaults to
        # weights_only=True on torch >= 2.6, and the file was just read that way above)
        model = BEATs(ckp_path=str(weights), freeze=True)
        head_classes = int(model.cfg.predictor_class) if model.predictor is not None else None
        model.predictor = None  # discard the AS-2M classifier head: we want the last hidden states
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.variant = variant
        patch = int(model.cfg.input_patch_size)
        if FBANK_BINS % patch or patch != FRAMES_PER_STEP:
            raise ValueError(f"BEATs patch size {patch} does not fit the 16-frame / 128-bin step rule")
        self.freq_patches = FBANK_BINS // patch
        self.hidden = int(model.cfg.encoder_embed_dim)
        keys = (
            "encoder_layers", "encoder_embed_dim", "encoder_attention_heads", "embed_dim", "input_patch_size",
            "deep_norm", "layer_norm_first", "relative_position_embedding", "gru_rel_pos", "finetuned_model",
        )  # fmt: skip
        import speechbrain
        import torchaudio

        self.info = EncoderInfo(
            name=name,
            dim=self.freq_patches * self.hidden,
            checksum=digest,
            stand_in=False,
            steps_per_second=AUDIO_STEPS_PER_SECOND,
            preprocessing={
                **FBANK_PREPROCESSING,
                "variant": variant,  # "finetuned" (the paper's cpt2) | "pretrained"
                "cfg": {k: _jsonable(cfg.get(k)) for k in keys if k in cfg},
                "layer": "last hidden states (classifier head discarded)" if head_classes else "last hidden states",
                "stacking": f"token t*{self.freq_patches}+p -> step t, dims [p*{self.hidden}:(p+1)*{self.hidden}]",
                "batching": "no padding: a clip runs alone or with clips of equal sample count",
                PROVENANCE: {  # recorded, not fingerprinted: does not change features
                    "checkpoint": Path(weights).name,
                    "head_classes_discarded": head_classes,
                    "implementation": "speechbrain.lobes.models.beats",
                    "speechbrain": speechbrain.__version__,
                    "torch": torch.__version__,
                    "torchaudio": torchaudio.__version__,
                },
            },
        )

    def _forward(self, wavs: list[np.ndarray]) -> np.ndarray:
        """B checked clips of one length N -> (B, S, 8 * hidden) float32. Never pads."""
        import torch

        n = len(wavs[0])
        if any(len(w) != n for w in wavs):
            raise ValueError("BEATs batches must hold clips of equal length (padding changes features)")
        s = audio_steps(n)
        wav = torch.from_numpy(np.stack(wavs)).to(self.device)  # (B, N)
        with torch.inference_mode():
            # wav_lens all 1: no padding mask (speechbrain raises on None)
            hidden = self.model.extract_features(wav, wav_lens=torch.ones(len(wavs), device=self.device))[0]  # (B, S*8, C)
        if hidden.shape[1] != s * self.freq_patches:
            raise EncodeError("encode", f"BEATs gave {hidden.shape[1]} tokens, expected {s} steps x {self.freq_patches}")
        # token t*8+p -> step t, dims [p*C:(p+1)*C]
        return hidden.reshape(len(wavs), s, self.freq_patches * self.hidden).float().cpu().numpy()

    def encode(self, samples: np.ndarray) -> np.ndarray:
        """(N,) float32 16 kHz -> (S, 8 * hidden) float32."""
        return self._forward([_check_audio(samples)])[0]

    def encode_many(
        self, clips: Sequence[np.ndarray], clip_batch: int | None = None
    ) -> list[np.ndarray | EncodeError]:
        """[(N_i,) float32 16 kHz] -> [(S_i, 8 * hidden) float32 | EncodeError], one per clip, in order.

        Clips are grouped by exact sample count and each group runs in batches of
        at most ``clip_batch`` (default ``self.clip_batch``); clips of different
        lengths never share a batch. VGGSound-shaped data (10 s clips) is mostly
        one length. An invalid clip gets its ``EncodeError`` in its place.
        """
        from .batching import group_equal_lengths

        out, valid = _checked(clips, _check_audio)
        order = list(valid)
        for group in group_equal_lengths([len(valid[i]) for i in order], int(clip_batch or self.clip_batch)):
            idx = [order[k] for k in group]
            for i, feats in zip(idx, self._forward([valid[i] for i in idx])):
                out[i] = np.ascontiguousarray(feats)
        return out  # type: ignore[return-value]


# ---------------------------------------------------------------------------- builders


def build_video_encoder(
    name: str,
    weights=None,
    device: str = "cpu",
    batch_size: int = 64,
    preprocess: str = "pil",
    frame_batch: int = 1024,
    pack: bool | None = None,
) -> VideoEncoder:
    """``pixels`` (parameter-free) or ``clip-vit-b32`` (weights: a local folder, a Hugging Face repository id
    looked up in the local HF cache only, or None for openai/clip-vit-base-patch32 from that cache).

    CLIP options (ignored by ``pixels``): ``preprocess`` ``"pil"`` | ``"tensor"`` (part of the cache
    identity), ``frame_batch`` frames per batch in ``encode_many``, ``pack`` frames across clips
    (default: on CUDA only); see :class:`ClipVisionEncoder`."""
    if name == "pixels":
        return PixelsEncoder()
    if name == "clip-vit-b32":
        return ClipVisionEncoder(
            weights=weights, device=device, batch_size=batch_size, preprocess=preprocess,
            frame_batch=frame_batch, pack=pack,
        )
    raise ValueError(f"unknown video encoder {name!r}; choose one of {VIDEO_ENCODERS}")


def build_audio_encoder(
    name: str, weights=None, device: str = "cpu", expected_sha256: str | None = None, clip_batch: int = 32
) -> AudioEncoder:
    """``fbank`` (parameter-free) or ``beats-iter3-as2m`` (weights: an official iter3+ AS2M .pt checkpoint,
    the paper's being BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt). ``clip_batch``: most equal-length
    clips per BEATs call in ``encode_many`` (ignored by ``fbank``)."""
    if name == "fbank":
        return FbankEncoder()
    if name == "beats-iter3-as2m":
        return BeatsEncoder(weights=weights, device=device, expected_sha256=expected_sha256, clip_batch=clip_batch)
    raise ValueError(f"unknown audio encoder {name!r}; choose one of {AUDIO_ENCODERS}")
