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


from scav.core.files import sha256_file  # noqa: F401  (re-exported: tests hash weight files with it)

from .base import *  # noqa: F401,F403
from .base import _check_audio, _check_frames, _checked, _EachAlone  # noqa: F401
from .beats import BeatsEncoder, load_beats_checkpoint  # noqa: F401
from .build import build_audio_encoder, build_video_encoder  # noqa: F401
from .clip import CLIP_PREPROCESS, TENSOR_RESIZE, ClipVisionEncoder, checksum_files  # noqa: F401
from .fbank import FbankEncoder, fbank_features  # noqa: F401
from .pixels import PixelsEncoder  # noqa: F401
