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
output) and ``beats-iter3-as2m`` (official BEATs checkpoint run through
speechbrain's implementation, last hidden states, 8 frequency patches stacked
per time step) are the real ones. Every encoder carries an ``EncoderInfo`` that
the cache stores, so every feature records what produced it.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from scav.core.files import sha256_file
from scav.core.schema import EncoderInfo

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


class AudioEncoder(Protocol):
    info: EncoderInfo

    def encode(self, samples: np.ndarray) -> np.ndarray:  # (N,) float32 -> (S, D) float32
        ...


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


class PixelsEncoder:
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


class FbankEncoder:
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


def _resolve_clip_dir(weights: str | os.PathLike | None) -> Path:
    """The local directory holding the CLIP files: ``weights`` or the offline HF cache snapshot."""
    if weights is not None:
        d = Path(weights)
        if not d.is_dir():
            raise FileNotFoundError(f"CLIP weights directory not found: {d}")
        return d
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(CLIP_REPO, local_files_only=True))
    except Exception as e:  # not in the cache: we never download
        raise FileNotFoundError(
            f"{CLIP_REPO} is not in the Hugging Face cache and downloads are off; "
            f"pass a local directory as weights ({e})"
        ) from None


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
    """CLIP's image processor; the PIL variant when torchvision (the default backend) is absent."""
    try:
        import torchvision  # noqa: F401

        from transformers import CLIPImageProcessor as Processor
    except ImportError:
        from transformers import CLIPImageProcessorPil as Processor
    return Processor.from_pretrained(str(d), local_files_only=True)


class ClipVisionEncoder:
    """transformers CLIP vision tower: one pooled vector (``pooler_output``) per frame."""

    def __init__(self, weights=None, device: str = "cpu", batch_size: int = 64, name: str = "clip-vit-b32"):
        import torch
        import transformers
        from transformers import CLIPVisionModel

        d = _resolve_clip_dir(weights)
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.processor = _load_image_processor(d)
        self.model = CLIPVisionModel.from_pretrained(str(d), local_files_only=True).to(self.device).eval()
        cfg = self.model.config
        proc = self.processor
        revision = d.name if d.parent.name == "snapshots" else None  # HF cache: snapshots/<commit>
        self.amp_dtype = torch.float16 if self.device.type == "cuda" else None
        self.info = EncoderInfo(
            name=name,
            dim=int(cfg.hidden_size),
            checksum=checksum_files(_weight_files(d)),
            stand_in=False,
            steps_per_second=None,
            preprocessing={
                "source": CLIP_REPO if weights is None else "local directory",
                "revision": revision,
                "transformers": transformers.__version__,
                "processor": type(proc).__name__,
                "size": _jsonable(getattr(proc, "size", None)),
                "crop_size": _jsonable(getattr(proc, "crop_size", None)),
                "image_mean": _jsonable(getattr(proc, "image_mean", None)),
                "image_std": _jsonable(getattr(proc, "image_std", None)),
                "image_size": int(cfg.image_size),
                "patch_size": int(cfg.patch_size),
                "num_hidden_layers": int(cfg.num_hidden_layers),
                "output": "pooler_output (post-layernorm CLS), no projection",
                "autocast": "float16 on CUDA, float32 on CPU",
            },
        )

    def preprocess(self, frames: np.ndarray) -> "torch.Tensor":  # noqa: F821
        """(T, H, W, 3) uint8 -> pixel_values (T, 3, S, S) float32 via the CLIP image processor."""
        return self.processor(images=list(frames), return_tensors="pt")["pixel_values"]

    def encode(self, frames: np.ndarray) -> np.ndarray:
        """(T, H, W, 3) uint8 -> (T, hidden) float32, batched over frames."""
        import torch

        x = _check_frames(frames)
        out = []
        with torch.inference_mode():
            for i in range(0, len(x), self.batch_size):
                pix = self.preprocess(x[i : i + self.batch_size]).to(self.device)
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                    pooled = self.model(pixel_values=pix).pooler_output  # (b, hidden)
                out.append(pooled.float().cpu().numpy())
        return np.concatenate(out).astype(np.float32, copy=False)


def _jsonable(v):
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


def load_beats_checkpoint(path: str | os.PathLike, expected_sha256: str | None = None) -> tuple[dict, str]:
    """Read an official-format BEATs checkpoint ``{'cfg', 'model'}`` safely; return (cfg, sha256).

    Refuses files without ``cfg`` (the default config loads silently and gives
    near-random features) and files whose sha256 differs from ``expected_sha256``.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"BEATs checkpoint not found: {path}")
    digest = sha256_file(path)
    if expected_sha256 is not None and digest != expected_sha256.lower():
        raise ValueError(f"BEATs checkpoint {path} has sha256 {digest}, expected {expected_sha256}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("cfg"), dict) or "model" not in ckpt:
        raise ValueError(f"{path} is not an official BEATs checkpoint: expected a dict with 'cfg' and 'model'")
    return ckpt["cfg"], digest


class BeatsEncoder:
    """Official BEATs checkpoint through speechbrain's BEATs; last hidden states, 8 patches stacked.

    Tokens are 16x16 patches over (time x 128 mel bins), flattened time-first, so
    token ``t * 8 + p`` is time step t, frequency patch p; step t of the output is
    ``concat_p token[t * 8 + p]`` -> 8 * 768 = 6144-d. Each clip runs alone: zero
    padding changes the valid frames too (PITFALLS), so clips are never batched.
    Runs in float32 (the fbank and deep-norm residuals are precision-sensitive).
    """

    def __init__(self, weights, device: str = "cpu", expected_sha256: str | None = None, name: str = "beats-iter3-as2m"):
        import torch
        from speechbrain.lobes.models.beats import BEATs

        if weights is None:
            raise FileNotFoundError(
                "beats-iter3-as2m needs the checkpoint file BEATs_iter3_plus_AS2M.pt as weights (never downloaded)"
            )
        cfg, digest = load_beats_checkpoint(weights, expected_sha256)
        # speechbrain builds the architecture from checkpoint['cfg'] (torch.load defaults to
        # weights_only=True on torch >= 2.6, and the file was just read that way above)
        model = BEATs(ckp_path=str(weights), freeze=True)
        model.predictor = None  # discard the AS-2M classifier head: we want hidden states
        self.model = model.to(device).eval()
        self.device = torch.device(device)
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

        self.info = EncoderInfo(
            name=name,
            dim=self.freq_patches * self.hidden,
            checksum=digest,
            stand_in=False,
            steps_per_second=AUDIO_STEPS_PER_SECOND,
            preprocessing={
                **FBANK_PREPROCESSING,
                "checkpoint": Path(weights).name,
                "cfg": {k: _jsonable(cfg.get(k)) for k in keys if k in cfg},
                "implementation": f"speechbrain.lobes.models.beats (speechbrain {speechbrain.__version__})",
                "layer": "last hidden states (classifier discarded)",
                "stacking": f"token t*{self.freq_patches}+p -> step t, dims [p*{self.hidden}:(p+1)*{self.hidden}]",
                "batching": "each clip alone (no padding)",
            },
        )

    def encode(self, samples: np.ndarray) -> np.ndarray:
        """(N,) float32 16 kHz -> (S, 8 * hidden) float32."""
        import torch

        x = _check_audio(samples)
        s = audio_steps(len(x))
        wav = torch.from_numpy(np.ascontiguousarray(x))[None].to(self.device)  # (1, N)
        with torch.inference_mode():
            hidden = self.model.extract_features(wav, wav_lens=torch.ones(1, device=self.device))[0]  # (1, S*8, C)
        if hidden.shape[1] != s * self.freq_patches:
            raise EncodeError("encode", f"BEATs gave {hidden.shape[1]} tokens, expected {s} steps x {self.freq_patches}")
        return hidden[0].reshape(s, self.freq_patches * self.hidden).float().cpu().numpy()


# ---------------------------------------------------------------------------- builders


def build_video_encoder(name: str, weights=None, device: str = "cpu", batch_size: int = 64) -> VideoEncoder:
    """``pixels`` (parameter-free) or ``clip-vit-b32`` (weights: local dir, or None for the offline HF cache)."""
    if name == "pixels":
        return PixelsEncoder()
    if name == "clip-vit-b32":
        return ClipVisionEncoder(weights=weights, device=device, batch_size=batch_size)
    raise ValueError(f"unknown video encoder {name!r}; choose one of {VIDEO_ENCODERS}")


def build_audio_encoder(
    name: str, weights=None, device: str = "cpu", expected_sha256: str | None = None
) -> AudioEncoder:
    """``fbank`` (parameter-free) or ``beats-iter3-as2m`` (weights: the .pt checkpoint file)."""
    if name == "fbank":
        return FbankEncoder()
    if name == "beats-iter3-as2m":
        return BeatsEncoder(weights=weights, device=device, expected_sha256=expected_sha256)
    raise ValueError(f"unknown audio encoder {name!r}; choose one of {AUDIO_ENCODERS}")
