"""``beats-iter3-as2m``: BEATs iter3+ AS2M through speechbrain's implementation (last hidden
states, 8 frequency patches stacked per 160 ms step -> 6144-d)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
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
    check_piece,
    too_short,
)
from .clip import _jsonable
from .fbank import FBANK_PREPROCESSING, STEP_SAMPLES, SampleBuffer, step_span

# BEATs was trained on 10 s clips and its attention is quadratic in length: a clip runs in
# windows of W steps. 64 steps = 10.24 s, so VGGSound's 10 s clips (10.0-10.1 s decoded: 62-63
# steps) and MUSIC's 10 s windows run whole, exactly as before windows existed.
BEATS_WINDOW_STEPS = 64

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

    A clip of 1.5 W steps or more (W = ``window_steps``, default 64 = 10.24 s, the
    length BEATs was trained on) runs window by window (``encode_chunks``): memory
    and attention cost per clip stay those of one window, whatever its duration.
    """

    def __init__(
        self,
        weights,
        device: str = "cpu",
        expected_sha256: str | None = None,
        name: str = "beats-iter3-as2m",
        clip_batch: int = 32,
        window_steps: int | None = None,
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
        self.window_steps = BEATS_WINDOW_STEPS if window_steps is None else int(window_steps)
        if self.window_steps < 1:
            raise ValueError(f"BEATs window must be >= 1 step (0.16 s), got {self.window_steps}")
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
                # the window changes the features of long clips; recorded only when not the default so
                # caches written before windows existed keep their fingerprint (absent = 64 steps)
                **({"window_steps": self.window_steps} if self.window_steps != BEATS_WINDOW_STEPS else {}),
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

    def runs_whole(self, n_samples: int) -> bool:
        """True if a clip of ``n_samples`` runs in one window: fewer than 1.5 W steps."""
        return 2 * audio_steps(n_samples) < 3 * self.window_steps

    def encode_chunks(self, chunks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Consecutive pieces of one clip's (n_i,) float32 16 kHz samples, any sizes -> (S_i, 8 * hidden)
        float32 blocks, one per window; together exactly S = audio_steps(N) steps.

        Windows are cut on step boundaries (2560 samples): window j holds steps [jW, jW + W) and is
        run on exactly its own samples ``[2560 jW, 2560 jW + step_span(W))``, so it yields W steps.
        The last window takes what is left when that is under 1.5 W steps (it never has fewer than
        W/2 steps of context unless the clip does), so a clip of under 1.5 W steps runs whole, on
        the samples as given: bit for bit what ``encode`` gave before windows existed. Memory:
        at most 1.5 W steps of samples and one window's attention, whatever the clip's duration.
        """
        w = self.window_steps
        buf, total = SampleBuffer(), 0
        for piece in chunks:
            x = check_piece(piece)
            total += len(x)
            buf.push(x)
            while 2 * (audio_steps(buf.n) - w) >= w:  # after this window, at least W/2 steps remain
                yield self._forward([buf.head(step_span(w))])[0]
                buf.drop(STEP_SAMPLES * w)
        if audio_steps(total) == 0:
            raise too_short(total)
        if audio_steps(buf.n) > 0:
            yield self._forward([buf.head(buf.n)])[0]  # the rest, tail samples included as before

    def encode(self, samples: np.ndarray) -> np.ndarray:
        """(N,) float32 16 kHz -> (S, 8 * hidden) float32 (in windows of W steps if the clip is long)."""
        x = _check_audio(samples)
        if self.runs_whole(len(x)):
            return self._forward([x])[0]
        return np.concatenate(list(self.encode_chunks([x])))

    def encode_many(
        self, clips: Sequence[np.ndarray], clip_batch: int | None = None
    ) -> list[np.ndarray | EncodeError]:
        """[(N_i,) float32 16 kHz] -> [(S_i, 8 * hidden) float32 | EncodeError], one per clip, in order.

        Clips are grouped by exact sample count and each group runs in batches of
        at most ``clip_batch`` (default ``self.clip_batch``); clips of different
        lengths never share a batch. VGGSound-shaped data (10 s clips) is mostly
        one length. A clip too long to run whole runs alone, window by window
        (``encode_chunks``). An invalid clip gets its ``EncodeError`` in its place.
        """
        from ..batching import group_equal_lengths

        out, valid = _checked(clips, _check_audio)
        for i in [i for i, x in valid.items() if not self.runs_whole(len(x))]:
            out[i] = np.concatenate(list(self.encode_chunks([valid.pop(i)])))
        order = list(valid)
        for group in group_equal_lengths([len(valid[i]) for i in order], int(clip_batch or self.clip_batch)):
            idx = [order[k] for k in group]
            for i, feats in zip(idx, self._forward([valid[i] for i in idx])):
                out[i] = np.ascontiguousarray(feats)
        return out  # type: ignore[return-value]
