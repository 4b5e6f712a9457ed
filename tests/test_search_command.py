"""`scav-retrieve search` / `report`: results against an independent ranking, the JSON-lines
schema, media queries encoded on the fly, and bad input (exit 2, nothing written)."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cache_factory import make_learnable_cache, make_random_cache
from encode_alone import encode_each_alone
from scav.core.cache import FeatureCache
from scav.model.checkpoint import load_model
from scav.model.objective import sequence_distance
from scav.retrieve.cli import app
from scav.retrieve.search_command import run_search
from scav.retrieve.search_config import SearchRequest
from scav.model.config import ObjectiveConfig
from test_retrieve_cli import TINY, make_checkpoint
from typer.testing import CliRunner

QUERY_KEYS = {"clip_id", "media", "split", "label", "source", "path", "start", "end", "modality", "track"}
RECORD_KEYS = {"query", "direction", "method", "k", "results", "checkpoint", "step", "encoders", "stand_in_encoders",
               "seq_distance"}
RESULT_KEYS = {"rank", "clip_id", "score", "label", "source", "split", "path", "start", "end", "is_partner"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("search")
    cache = make_learnable_cache(tmp / "f.zarr", {"train": 5, "test": 13}, lengths=(1.0, 3.0), seed=4)
    post = make_checkpoint(tmp, cache, ObjectiveConfig(kind="scav", interp="post", resample="audio"), "post.pt")
    return tmp, cache, post


def independent_lists(cache_path, ckpt, split, direction, k, topk):
    """Every clip encoded alone; full matrices; per query the ids of agg / seq / hybrid's top lists."""
    model, objective, _ = load_model(ckpt)
    cache = FeatureCache.open(cache_path)
    clips = cache.clips(split)
    v, vm, a, am = encode_each_alone(model, cache, clips)
    ve = torch.stack([x[m].mean(0) for x, m in zip(v, vm)]).double()
    ae = torch.stack([x[m].mean(0) for x, m in zip(a, am)]).double()
    with torch.no_grad():
        d = sequence_distance(objective, v, vm, a, am).double()  # (video, audio)
    cos = F.normalize(ve, dim=-1) @ F.normalize(ae, dim=-1).T
    if direction == "a2v":  # rows = audio queries
        cos, d = cos.T, d.T
    ids = [c.clip_id for c in clips]
    out = {"agg": [], "seq": [], "hybrid": []}
    for i in range(len(ids)):
        by_cos = sorted(range(len(ids)), key=lambda j: (-float(cos[i, j]), j))
        out["agg"].append(([ids[j] for j in by_cos[:topk]], [float(cos[i, j]) for j in by_cos[:topk]]))
        by_d = sorted(range(len(ids)), key=lambda j: (float(d[i, j]), j))
        out["seq"].append(([ids[j] for j in by_d[:topk]], [-float(d[i, j]) for j in by_d[:topk]]))
        hyb = sorted(by_cos[:k], key=lambda j: (float(d[i, j]), j))
        out["hybrid"].append(([ids[j] for j in hyb[:topk]], [-float(d[i, j]) for j in hyb[:topk]]))
    return ids, out


@pytest.mark.parametrize("direction", ["a2v", "v2a"])
def test_search_equals_independent_ranking(setup, direction):
    tmp, cache, post = setup
    ids, want = independent_lists(cache, post, "test", direction, k=6, topk=4)
    for method in ("agg", "seq", "hybrid"):
        res = run_search(SearchRequest(checkpoint=str(post), cache=str(cache), query_split="test",
                                       gallery_splits=("test",), direction=direction, method=method, k=6, topk=4,
                                       device="cpu", batch_size=5, query_block=4, candidate_chunk=3))
        assert [r["query"]["clip_id"] for r in res.records] == ids
        for rec, (want_ids, want_scores) in zip(res.records, want[method]):
            assert [x["clip_id"] for x in rec["results"]] == want_ids, (method, rec["query"]["clip_id"])
            assert [x["score"] for x in rec["results"]] == pytest.approx(want_scores, rel=1e-4, abs=1e-5)
            assert rec["k"] == (6 if method == "hybrid" else None)
            assert rec["query"]["modality"] == ("audio" if direction == "a2v" else "video")


def test_cli_json_lines_schema_and_tables(setup, tmp_path):
    tmp, cache, post = setup
    (tmp_path / "ids.txt").write_text("# two queries\ntest-0002\n\ntrain-0001\n")
    out = tmp_path / "out" / "hits.jsonl"
    args = ["search", "--checkpoint", str(post), "--cache", str(cache), "--query-ids", str(tmp_path / "ids.txt"),
            "--query-clip", "test-0005", "--device", "cpu", "--topk", "18", "--k", "18", "--json", str(out)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "test-0005" in r.output and "partner" in r.output and "18 gallery clips" in r.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [x["query"]["clip_id"] for x in records] == ["test-0005", "test-0002", "train-0001"]
    for rec in records:
        assert set(rec) == RECORD_KEYS and set(rec["query"]) == QUERY_KEYS
        assert rec["direction"] == "a2v" and rec["method"] == "hybrid" and rec["step"] == 7
        assert rec["stand_in_encoders"] is True and rec["encoders"]["audio"] == "fbank (stand-in)"
        assert [x["rank"] for x in rec["results"]] == list(range(1, 19))  # the whole cache is the gallery
        assert all(set(x) == RESULT_KEYS for x in rec["results"])
        partners = [x for x in rec["results"] if x["is_partner"]]
        assert [x["clip_id"] for x in partners] == [rec["query"]["clip_id"]]
        scores = [x["score"] for x in rec["results"]]
        assert scores == sorted(scores, reverse=True)
    stdout = CliRunner().invoke(app, args[:-1] + ["-"])
    assert stdout.exit_code == 0
    assert [json.loads(line) for line in stdout.stdout.splitlines()] == records  # nothing else on stdout


def test_unknown_clip_ids_exit_2_nothing_written(setup, tmp_path):
    tmp, cache, post = setup
    out = tmp_path / "hits.jsonl"
    base = ["search", "--checkpoint", str(post), "--cache", str(cache), "--device", "cpu", "--json", str(out)]
    cases = [
        (["--query-clip", "nope-1", "--query-clip", "test-0001", "--query-clip", "nope-2"],
         "2 query clip id(s) not in", ["nope-1", "nope-2"]),
        (["--query-ids", str(tmp_path / "missing.txt")], "cannot read the query id file", []),
        (["--query-split", "nope"], "split 'nope' has no clips", []),
        (["--query-clip", "test-0001", "--gallery-split", "val"], "no clips of split(s) 'val'", []),
        (["--query-clip", "test-0001", "--k", "5", "--topk", "6"], "must be <= --k", []),
        (["--query-clip", "test-0001", "--k", "99"], "larger than the gallery", []),
        ([], "no queries", []),
    ]
    for extra, msg, named in cases:
        r = CliRunner().invoke(app, base + extra)
        text = " ".join(r.output.split())
        assert r.exit_code == 2 and msg in text and all(n in text for n in named), (extra, r.output)
        assert "Traceback" not in r.output and not out.exists()


def test_help_explains_evaluation_and_commands():
    r = CliRunner().invoke(app, ["--help"])
    assert r.exit_code == 0
    for word in ("--split", "search", "index", "report", "Without a command"):
        assert word in r.output
    r = CliRunner().invoke(app, [])
    assert r.exit_code == 2 and "Missing option '--split'" in r.output
    r = CliRunner().invoke(app, ["--split", "test", "search", "--help"])
    assert r.exit_code == 2 and "belong to the evaluation" in r.output


# ----------------------------------------------------------------------------- media queries


@pytest.fixture(scope="module")
def media_setup(tmp_path_factory):
    """A real cache extracted from generated media with the stand-in encoders, and a checkpoint."""
    from scav.data_manifests.manifest import ManifestRow
    from scav.data_manifests.media import AudioSpec, write_media
    from scav.extract.runner import ExtractConfig, run
    from scav.model.checkpoint import make_payload, save_checkpoint
    from scav.model.network import SCAVModel
    from scav.train.config import TrainConfig

    tmp = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    rows = []
    for i, (fps, seconds) in enumerate([(25, 1.2), (24, 1.6), (30, 1.0), (25, 2.0)]):
        n = int(fps * seconds)
        frames = rng.integers(0, 256, (n, 24, 32, 3), dtype=np.uint8)
        audio = AudioSpec(rng.uniform(-0.5, 0.5, (1, int(seconds * 16000))).astype(np.float32), 16000)
        write_media(tmp / "media" / f"m{i}.mp4", frames, fps=fps, audio=[audio])
        rows.append(ManifestRow(f"m{i}", f"media/m{i}.mp4", split="test", label=f"l{i}"))
    cache = tmp / "f.zarr"
    run(ExtractConfig(manifest=None, rows=tuple(rows), out=cache, media_root=tmp, progress=False, decode_workers=0))
    meta = FeatureCache.open(cache).meta
    torch.manual_seed(0)
    obj = ObjectiveConfig(kind="scav", interp="pre", resample="video")
    model = SCAVModel(TINY, meta.video.dim, meta.audio.dim, obj)
    cfg = TrainConfig(cache=str(cache), out=str(tmp / "run"), model=TINY, objective=obj)
    ckpt = save_checkpoint(tmp / "ckpt.pt", make_payload(model, cfg, meta, step=3))
    return tmp, cache, ckpt


def test_media_query_equals_its_cache_clip(media_setup, tmp_path):
    """A file decoded and encoded now gives the latents of the clip extracted from it."""
    tmp, cache, ckpt = media_setup
    common = dict(checkpoint=str(ckpt), cache=str(cache), device="cpu", topk=4, k=4)
    for method in ("agg", "seq", "hybrid"):
        by_clip = run_search(SearchRequest(query_clips=("m1",), method=method, **common)).records[0]
        by_media = run_search(SearchRequest(query_media=(str(tmp / "media" / "m1.mp4"),), method=method,
                                            **common)).records[0]
        assert [x["clip_id"] for x in by_media["results"]] == [x["clip_id"] for x in by_clip["results"]]
        assert [x["score"] for x in by_media["results"]] == pytest.approx([x["score"] for x in by_clip["results"]],
                                                                           rel=1e-4, abs=1e-5)
        q = by_media["query"]
        assert q["clip_id"] is None and q["media"].endswith("m1.mp4") and q["start"] == 0.0
        assert not any(x["is_partner"] for x in by_media["results"])


def test_bad_media_and_weights_exit_2(media_setup, tmp_path):
    tmp, cache, ckpt = media_setup
    (tmp_path / "junk.mp4").write_bytes(b"this is not a video")
    out = tmp_path / "hits.jsonl"
    base = ["search", "--checkpoint", str(ckpt), "--device", "cpu", "--json", str(out)]
    cases = [
        (["--cache", str(cache), "--query-media", str(tmp / "media" / "m0.mp4"), "--query-media",
          str(tmp_path / "junk.mp4")], "cannot decode query media"),
        (["--cache", str(cache), "--query-media", str(tmp_path / "none.mp4")], "file not found"),
    ]
    # a cache whose audio features came from BEATs: the checkpoint file must be given, and be that one
    beats = make_random_cache(tmp_path / "b.zarr", {"test": 3}, audio_name="beats-iter3-as2m")
    beats_ckpt = make_checkpoint(tmp_path, beats, ObjectiveConfig(kind="scav", interp="post"), "b.pt")
    media = str(tmp / "media" / "m0.mp4")
    cases.append((["--cache", str(beats), "--checkpoint", str(beats_ckpt), "--query-media", media],
                  "cannot build the cache's encoders"))
    for extra, msg in cases:
        r = CliRunner().invoke(app, base + extra)
        assert r.exit_code == 2 and msg in " ".join(r.output.split()), (extra, r.output)
        assert "Traceback" not in r.output and not out.exists()


def test_media_query_refuses_other_beats_weights(media_setup, tmp_path):
    """A BEATs checkpoint other than the cache's: refused naming the differing fields."""
    pytest.importorskip("speechbrain")
    from scav.retrieve.query import QueryError, build_encoders
    from tiny_models import make_tiny_beats_ckpt

    beats = make_random_cache(tmp_path / "b.zarr", {"test": 3}, audio_name="beats-iter3-as2m")
    with pytest.raises(QueryError, match="not the ones the cache was extracted with"):
        build_encoders(FeatureCache.open(beats).meta, None, str(make_tiny_beats_ckpt(tmp_path)))


# ----------------------------------------------------------------------------- report


def test_report_writes_page_with_curve(setup, tmp_path):
    pytest.importorskip("av")
    tmp, cache, post = setup
    out = tmp_path / "report"
    r = CliRunner().invoke(app, ["report", "--checkpoint", str(post), "--cache", str(cache), "--split", "test",
                                 "--out", str(out), "--max-queries", "3", "--ks", "1,5,50", "--device", "cpu",
                                 "--json", str(tmp_path / "r.jsonl")])
    assert r.exit_code == 0, r.output
    page = (out / "index.html").read_text()
    assert page.count('class="query"') == 3 and (out / "assets" / "k_curve.png").is_file()
    records = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(set(x) == RECORD_KEYS for x in records)
    assert {x["query"]["split"] for x in records} == {"test"}
