"""``beats-iter3-as2m``: BEATs iter3+ AS2M through speechbrain's implementation (last hidden
states, 8 frequency patches stacked per 160 ms step -> 6144-d)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scav.core.files import sha256_file
from scav.core.schema import PROVENANCE, EncoderInfo

from .base import (
    AUDIO_STEPS_PER_SECOND,
    BEATS_PAPER_CKPT,
    FBANK_BINS,
    FRAMES_PER_STEP,
    EncodeError,
    _check_audio,
    _checked,
    audio_steps,
)
from .clip import _jsonable
from .fbank import FBANK_PREPROCESSING

log = logging.getLogger(__name__)



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
        from ..batching import group_equal_lengths

        out, valid = _checked(clips, _check_audio)
        order = list(valid)
        for group in group_equal_lengths([len(valid[i]) for i in order], int(clip_batch or self.clip_batch)):
            idx = [order[k] for k in group]
            for i, feats in zip(idx, self._forward([valid[i] for i in idx])):
                out[i] = np.ascontiguousarray(feats)
        return out  # type: ignore[return-value]
