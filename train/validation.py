"""Validation: R@1 both ways of held-out clips, with the latents retrieval computes.

Clips are encoded by :func:`scav.model.embed.embed_split`, retrieval's own encoder of a
split: with interp='pre' each clip's resampled side takes a length of its own
(``pre_lengths``), not its partner's, so validation selects checkpoints on the
representation that retrieval ranks with.
"""

from __future__ import annotations

import torch
from scav.core.cache import FeatureCache
from scav.model.embed import embed_split
from scav.model.network import SCAVModel
from scav.model.objective import sequence_distance
from scav.sequence.metrics import ranks_from_scores, recall_at

from .config import TrainConfig


def recall_at_1_both_ways(score: torch.Tensor) -> tuple[float, float]:
    """score (N, N), rows = video, cols = audio, pair i = (i, i), higher = closer.

    -> (V->A R@1, A->V R@1) as fractions in [0, 1]. Ranks come from
    ``scav.sequence.metrics`` (the retrieval stage's): a tie is broken by
    candidate index, so validation and retrieval agree on every matrix.
    """
    v2a = recall_at(ranks_from_scores(score), 1) / 100.0
    a2v = recall_at(ranks_from_scores(score.T), 1) / 100.0
    return v2a, a2v


@torch.no_grad()
def validate(model: SCAVModel, cfg: TrainConfig, val_ids: list[str], device: torch.device,
             cache: FeatureCache | None = None) -> dict[str, float]:
    """R@1 both directions with aggregation (cosine of means) and sequence retrieval.

    The clips ``val_ids`` of ``cfg.split`` are encoded by ``embed_split`` (cache order; see
    the module docstring) and ranked on ``device``; ``cache``: the open cache of ``cfg.cache``.
    """
    cache = cache if cache is not None else FeatureCache.open(cfg.cache)
    wanted = set(val_ids)
    clips = [c for c in cache.clips(cfg.split) if c.clip_id in wanted]
    lat = embed_split(model, cache, cache.meta, cfg.split, clips, batch_size=64, device=device,
                      track=cfg.audio_track)
    ve = torch.nn.functional.normalize(lat.video.embeddings(0, len(clips)).to(device), dim=-1)
    ae = torch.nn.functional.normalize(lat.audio.embeddings(0, len(clips)).to(device), dim=-1)
    agg = recall_at_1_both_ways(ve @ ae.T)
    every = list(range(len(clips)))
    v_seq, v_mask = (x.to(device) for x in lat.video.take(every))  # (N, T, c), (N, T)
    a_seq, a_mask = (x.to(device) for x in lat.audio.take(every))  # (N, S, c), (N, S)
    rows = [
        sequence_distance(cfg.objective, v_seq[i : i + 64], v_mask[i : i + 64], a_seq, a_mask)
        for i in range(0, len(clips), 64)
    ]
    seq = recall_at_1_both_ways(-torch.cat(rows))
    return {"agg_v2a_r1": agg[0], "agg_a2v_r1": agg[1], "seq_v2a_r1": seq[0], "seq_a2v_r1": seq[1]}


def selection_score(cfg: TrainConfig, val: dict[str, float]) -> float:
    """Mean R@1 of the retrieval method matching the objective."""
    m = "agg" if cfg.objective.kind == "cav" else "seq"
    return 0.5 * (val[f"{m}_v2a_r1"] + val[f"{m}_a2v_r1"])
