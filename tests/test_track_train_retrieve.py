"""The audio track chosen on the command line reaches training and retrieval."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from encode_alone import encode_each_alone
from scav.core.cache import CacheWriter, ClipRecord, FeatureCache, new_meta
from scav.core.schema import AudioTrack, CacheLayout, ClipInfo, EncoderInfo
from scav.model.checkpoint import load_model, make_payload, save_checkpoint
from scav.model.network import SCAVModel
from scav.model.objective import sequence_distance
from scav.retrieve.cli import app as retrieve_app
from scav.retrieve.evaluate import RetrieveConfig, run
from scav.sequence.metrics import ranks_from_scores, summarize_ranks
from scav.model.config import ModelConfig, ObjectiveConfig
from scav.train.config import TrainConfig
from typer.testing import CliRunner

DV, DA = 6, 4
TINY = ModelConfig(c=8, video_layers=1, audio_layers=1, heads=2, video_mlp_hidden=16, audio_mlp_hidden=16, dropout=0.0)


def _record(i: int, split: str) -> ClipRecord:
    """Track 0 'eng' for every clip; a 'spa' dub (other length, other values) on all but every 5th."""
    rng = np.random.default_rng(i)
    t = 4 + i % 3
    tracks, audio = [AudioTrack(0, "eng", 3 + i % 2)], [rng.standard_normal((3 + i % 2, DA)).astype(np.float16)]
    if i % 5 != 4:
        n = 2 + i % 4
        tracks.append(AudioTrack(1, "spa", n))
        audio.append((rng.standard_normal((n, DA)) + 3).astype(np.float16))
    info = ClipInfo(f"{split}-{i:02d}", split, source=f"s{i}", n_video=t, fps=10.0, duration=t / 10.0, tracks=tracks)
    return ClipRecord(info, rng.standard_normal((t, DV)).astype(np.float16), np.arange(t) / 10.0, audio)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tracks")
    path = tmp / "c.zarr"
    meta = new_meta(EncoderInfo("pixels", DV, stand_in=True), EncoderInfo("fbank", DA, stand_in=True),
                    layout=CacheLayout(chunk_rows=4))
    with CacheWriter.create_or_open(path, meta) as w:
        w.write_part([_record(i, "test") for i in range(10)] + [_record(i, "train") for i in range(10, 24)])
    objective = ObjectiveConfig(kind="scav", interp="post", resample="audio")
    torch.manual_seed(0)
    model = SCAVModel(TINY, DV, DA, objective)
    cfg = TrainConfig(cache=str(path), out=str(tmp / "run"), model=TINY, objective=objective)
    ckpt = save_checkpoint(tmp / "ck.pt", make_payload(model, cfg, FeatureCache.open(path).meta, step=1))
    return tmp, path, ckpt


def independent_ranks(cache_path, ckpt, track):
    """Each clip with the track encoded alone from FeatureCache.get(track=...), full matrices."""
    model, objective, _ = load_model(ckpt)
    cache = FeatureCache.open(cache_path)
    with_track = [c for c in cache.clips("test") if c.find_track(track) is not None]
    v, vm, a, am = encode_each_alone(model, cache, with_track, track)
    ve = torch.stack([x[m].mean(0) for x, m in zip(v, vm)])
    ae = torch.stack([x[m].mean(0) for x, m in zip(a, am)])
    cos = F.normalize(ve, dim=-1) @ F.normalize(ae, dim=-1).T
    with torch.no_grad():
        d = sequence_distance(objective, v, vm, a, am)
    return len(with_track), {"agg": ranks_from_scores(cos.T), "seq": ranks_from_scores(-d.T)}


@pytest.mark.parametrize("track", [0, 1, "spa", "eng"])
def test_retrieval_ranks_the_chosen_track(setup, track):
    _, path, ckpt = setup
    res = run(RetrieveConfig(checkpoint=str(ckpt), split="test", cache=str(path), method="all", k=3,
                             device="cpu", audio_track=track))
    n, ref = independent_ranks(path, ckpt, track)
    assert res["num_queries"] == n == (10 if track in (0, "eng") else 8)  # clips 4 and 9 have no dub
    for m in ("agg", "seq"):
        assert res["results"][m]["a2v"] == pytest.approx(summarize_ranks(ref[m])), m
    if track in (1, "spa"):  # the dub really is another signal: different ranks than track 0
        _, ref0 = independent_ranks(path, ckpt, 0)
        assert ref0["seq"].shape != ref["seq"].shape or not torch.equal(ref0["seq"], ref["seq"])


def test_retrieve_cli_parses_and_checks_the_track(setup):
    _, path, ckpt = setup
    base = ["--split", "test", "--cache", str(path), "--checkpoint", str(ckpt), "--method", "agg", "--device", "cpu"]
    ok = CliRunner().invoke(retrieve_app, base + ["--audio-track", "spa", "--json", "-"])
    assert ok.exit_code == 0, ok.output
    assert '"num_queries": 8' in ok.output
    bad = CliRunner().invoke(retrieve_app, base + ["--audio-track", " "])
    assert bad.exit_code == 2 and "language tag" in bad.output


def test_training_reads_the_chosen_track(setup, monkeypatch):
    tmp, path, _ = setup
    from scav.train import feed, loop

    served = []
    real = feed.make_train_loader

    def recording(*args, **kw):
        served.append(kw.get("track"))
        return real(*args, **kw)

    monkeypatch.setattr(feed, "make_train_loader", recording)
    train_ids = [c.clip_id for c in FeatureCache.open(path).clips("train") if c.find_track("spa") is not None]
    cfg = TrainConfig(cache=str(path), out=str(tmp / "run-spa"), audio_track="spa", val_clips=0, steps=2,
                      batch_size=4, model=TINY, objective=ObjectiveConfig(kind="cav"), device="cpu", log_every=1)
    with pytest.raises(Exception, match="no audio track 'spa'"):  # two train clips lack the dub: refused, named
        loop.run(cfg)
    assert served and set(served) == {"spa"}
    assert len(train_ids) == 12
