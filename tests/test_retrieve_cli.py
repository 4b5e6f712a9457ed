"""scav-retrieve end to end on a tiny cache and a tiny random checkpoint."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from cache_factory import make_learnable_cache, make_random_cache
from encode_alone import encode_each_alone
from scav.core.cache import FeatureCache
from scav.model.checkpoint import make_payload, save_checkpoint
from scav.model.network import SCAVModel
from scav.model.objective import sequence_distance
from scav.retrieve.cli import app
from scav.retrieve.evaluate import RetrieveConfig, run
from scav.sequence.metrics import ranks_from_scores, summarize_ranks
from scav.model.config import ModelConfig, ObjectiveConfig
from scav.train.config import TrainConfig
from typer.testing import CliRunner

TINY = ModelConfig(c=8, video_layers=1, audio_layers=1, heads=2, video_mlp_hidden=16, audio_mlp_hidden=16, dropout=0.0)


def make_checkpoint(tmp_path, cache_path, objective: ObjectiveConfig, name="ckpt.pt", seed=0) -> Path:
    cache = FeatureCache.open(cache_path)
    torch.manual_seed(seed)
    model = SCAVModel(TINY, cache.meta.video.dim, cache.meta.audio.dim, objective)
    cfg = TrainConfig(cache=str(cache_path), out=str(tmp_path / "run"), model=TINY, objective=objective)
    return save_checkpoint(tmp_path / name, make_payload(model, cfg, cache.meta, step=7))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("retr")
    cache = make_learnable_cache(tmp / "f.zarr", {"train": 4, "test": 13}, lengths=(1.0, 3.0), seed=1)
    post = make_checkpoint(tmp, cache, ObjectiveConfig(kind="scav", interp="post", resample="audio"), "post.pt")
    pre = make_checkpoint(tmp, cache, ObjectiveConfig(kind="scav", interp="pre", resample="video"), "pre.pt")
    return tmp, cache, post, pre


def independent_ranks(cache_path, ckpt_path, split):
    """Each clip encoded alone (no padding), full matrices, ranks by the metrics module."""
    from scav.model.checkpoint import load_model

    model, objective, _ = load_model(ckpt_path)
    cache = FeatureCache.open(cache_path)
    v, vm, a, am = encode_each_alone(model, cache, cache.clips(split))
    vs = [x[: int(m.sum())] for x, m in zip(v, vm)]
    as_ = [x[: int(m.sum())] for x, m in zip(a, am)]
    ve = torch.stack([x.mean(0) for x in vs])
    ae = torch.stack([x.mean(0) for x in as_])
    cos = F.normalize(ve.double(), dim=-1) @ F.normalize(ae.double(), dim=-1).T  # (video, audio)
    with torch.no_grad():
        d = sequence_distance(objective, v, vm, a, am)
    return {
        "agg": {"a2v": ranks_from_scores(cos.T.float()), "v2a": ranks_from_scores(cos.float())},
        "seq": {"a2v": ranks_from_scores(-d.T), "v2a": ranks_from_scores(-d)},
        "lengths": ([len(x) for x in vs], [len(x) for x in as_]),
    }


@pytest.mark.parametrize("which", ["post", "pre"])
def test_run_matches_independent_computation(setup, which):
    tmp, cache, post, pre = setup
    ckpt = post if which == "post" else pre
    res = run(RetrieveConfig(checkpoint=str(ckpt), split="test", cache=str(cache), method="all", k=4,
                             batch_size=5, query_block=4, candidate_chunk=3, device="cpu"))
    ref = independent_ranks(cache, ckpt, "test")
    assert res["num_queries"] == res["num_candidates"] == 13
    assert res["encoders"] == {"video": "pixels (stand-in)", "audio": "fbank (stand-in)"}
    for m in ("agg", "seq"):
        for d in ("a2v", "v2a"):
            want = summarize_ranks(ref[m][d])
            assert res["results"][m][d] == pytest.approx(want), (m, d)
    infos = FeatureCache.open(cache).clips("test")
    vl, al = ref["lengths"]
    if which == "pre":  # v2a pre: each video encoded at its own audio length
        assert vl == [c.n_audio for c in infos]
    else:
        assert vl == [c.n_video for c in infos] and vl != al


def test_cli_json_matches_run_and_export_reuse(setup):
    tmp, cache, post, _ = setup
    parts_before = sorted((p, p.stat().st_mtime_ns) for p in Path(cache).rglob("*"))
    out_json = tmp / "out" / "r.json"
    runner = CliRunner()
    args = ["--split", "test", "--checkpoint", str(post), "--cache", str(cache), "--method", "hybrid",
            "--k", "5", "--json", str(out_json), "--device", "cpu", "--export"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "A->V" in r.output and "stand-in" in r.output
    got = json.loads(out_json.read_text())
    for key in ("split", "method", "k", "checkpoint", "num_queries", "num_candidates", "seconds", "a2v", "v2a"):
        assert key in got
    assert set(got["a2v"]) == {"R@1", "R@5", "R@10", "MedR", "MeanR"}
    export = Path(got["export"])
    assert export.parent == Path(f"{cache}.retrieval") and export.name.startswith("test-")
    assert (export / "video_seq.npy").is_file()
    # same numbers from run(), which now reuses the export
    direct = run(RetrieveConfig(checkpoint=str(post), split="test", cache=str(cache), method="hybrid", k=5,
                                device="cpu", export=True))
    assert direct["a2v"] == got["a2v"] and direct["v2a"] == got["v2a"]
    # the cache itself is untouched
    assert sorted((p, p.stat().st_mtime_ns) for p in Path(cache).rglob("*")) == parts_before


def test_bad_inputs_exit_cleanly(setup, tmp_path):
    tmp, cache, post, _ = setup
    runner = CliRunner()
    base = ["--checkpoint", str(post), "--cache", str(cache), "--device", "cpu"]
    cases = [
        (["--split", "nope"], "available: test (13), train (4)"),
        (["--split", "test", "--k", "14", "--method", "hybrid"], "larger than split"),
        (["--split", "test", "--checkpoint", str(tmp_path / "missing.pt")], "no checkpoint"),
    ]
    other = make_random_cache(tmp_path / "other.zarr", {"test": 3}, video_dim=16, audio_dim=24, video_name="clip-vit-b32")
    cases.append((["--split", "test", "--cache", str(other)], "was trained on other encoders: video=pixels"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    cases.append((["--split", "test", "--checkpoint", str(tmp_path / "junk.pt")], "not a readable SCAV checkpoint"))
    for extra, msg in cases:
        r = runner.invoke(app, base + extra)
        assert r.exit_code == 2, (extra, r.output)
        assert msg in " ".join(r.output.split()), (extra, r.output)
        assert "Traceback" not in r.output


def test_help_does_not_import_torch():
    code = "import sys; from scav.retrieve.cli import app; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ})


def test_cli_options_are_the_config_defaults(setup, monkeypatch):
    """The typer options carry RetrieveConfig's own defaults (nothing written twice)."""
    import scav.retrieve.evaluate as evaluate

    tmp, cache, post, _ = setup
    seen = []
    monkeypatch.setattr(evaluate, "run", lambda cfg: seen.append(cfg) or {})
    r = CliRunner().invoke(app, ["--split", "test", "--checkpoint", str(post), "--json", "-"])
    assert r.exit_code == 0, r.output
    assert seen == [RetrieveConfig(checkpoint=str(post), split="test", json_path="-")]


def test_dtw_gamma_zero_ranks_by_hard_dtw(setup, tmp_path):
    from scav.sequence.dtw import dtw_matrix

    _, cache, _, _ = setup
    ckpt = make_checkpoint(tmp_path, cache, ObjectiveConfig(kind="scav", distance="soft_dtw", interp="post"), "sdtw.pt")
    res = run(RetrieveConfig(checkpoint=str(ckpt), split="test", cache=str(cache), method="seq", dtw_gamma=0.0,
                             query_block=4, candidate_chunk=3, device="cpu"))
    assert res["seq_distance"] == "dtw (hard)"
    from scav.model.checkpoint import load_model

    model, _, _ = load_model(ckpt)
    fc = FeatureCache.open(cache)
    v, vm, a, am = encode_each_alone(model, fc, fc.clips("test"))
    d = dtw_matrix(v.double(), vm, a.double(), am)
    assert res["a2v"] == pytest.approx(summarize_ranks(ranks_from_scores(-d.T)))
    assert res["v2a"] == pytest.approx(summarize_ranks(ranks_from_scores(-d)))
    r = CliRunner().invoke(app, ["--split", "test", "--checkpoint", str(setup[2]), "--cache", str(cache),
                                 "--device", "cpu", "--dtw-gamma", "0"])
    assert r.exit_code == 2 and "applies to soft-DTW models" in " ".join(r.output.split())
