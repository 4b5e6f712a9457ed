"""Reference encoding for retrieval tests: every clip through the model alone, no batching."""

from __future__ import annotations

import torch


@torch.no_grad()
def encode_each_alone(model, cache, clips, track=0):
    """Latent sequences of ``clips`` (ClipInfo list), each encoded alone from
    ``cache.get(clip_id, track)``, padded: (v (N, T, c), v_mask, a (N, S, c), a_mask)."""
    vs, as_ = [], []
    for info in clips:
        f = cache.get(info.clip_id, track=track)
        v = torch.from_numpy(f.video.astype("float32"))[None]
        a = torch.from_numpy(f.audio.astype("float32"))[None]
        out = model(v, torch.ones(v.shape[:2], dtype=torch.bool), a, torch.ones(a.shape[:2], dtype=torch.bool))
        vs.append(out["video_seq"][0])
        as_.append(out["audio_seq"][0])
    pad = torch.nn.utils.rnn.pad_sequence
    v, a = pad(vs, batch_first=True), pad(as_, batch_first=True)
    vm = torch.arange(v.shape[1])[None] < torch.tensor([len(x) for x in vs])[:, None]
    am = torch.arange(a.shape[1])[None] < torch.tensor([len(x) for x in as_])[:, None]
    return v, vm, a, am
