"""Saved gallery indexes: search over an index == the evaluation's search on the same latents;
only the candidates' sequences are read; an index of another checkpoint / encoders / format is refused."""

import json

import numpy as np
import pytest
import torch
from cache_factory import make_learnable_cache, make_random_cache
from scav.model.latents import Latents
from scav.retrieve import search
from scav.retrieve.cli import app
from scav.retrieve.first_stage import FirstStageConfig
from scav.retrieve.gallery_index import (
    ClipTable,
    GalleryIndexError,
    load_index,
    save_index,
)
from scav.retrieve.gallery_search import rank
from scav.retrieve.search import BlockConfig
from scav.sequence.spec import DistanceSpec
from scav.model.config import ObjectiveConfig
from test_retrieve_cli import make_checkpoint
from typer.testing import CliRunner


def ragged_pair(n=40, c=6, seed=0):
    """Video / audio latents of n clips, ragged lengths, audio = resampled video + noise."""
    g = torch.Generator().manual_seed(seed)
    vl = torch.randint(3, 12, (n,), generator=g).tolist()
    al = torch.randint(2, 8, (n,), generator=g).tolist()
    vs = [torch.randn(L, c, generator=g) + torch.randn(1, c, generator=g) for L in vl]
    as_ = [torch.nn.functional.interpolate(v.T[None], size=L, mode="linear")[0].T + 0.7 * torch.randn(L, c, generator=g)
           for v, L in zip(vs, al)]

    def store(xs):
        off = np.zeros(len(xs) + 1, np.int64)
        np.cumsum([len(x) for x in xs], out=off[1:])
        return Latents(torch.cat(xs).numpy(), off, torch.stack([x.mean(0) for x in xs]).numpy())

    return store(vs), store(as_)


def table(n):
    return ClipTable({"clip_id": [f"c{i}" for i in range(n)], "split": ["s"] * n, "label": [""] * n,
                      "source": [""] * n, "path": [""] * n, "start": [None] * n, "end": [None] * n})


class CountingLatents(Latents):
    """A store that counts the sequence rows it hands out."""

    rows_read = 0

    def range(self, a, b):
        CountingLatents.rows_read += int(self.offsets[b] - self.offsets[a])
        return super().range(a, b)

    def take(self, idx):
        CountingLatents.rows_read += int(self.lengths[np.asarray(idx)].sum())
        return super().take(idx)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    video, audio = ragged_pair()
    folder = tmp_path_factory.mktemp("idx") / "index"
    return video, audio, save_index(folder, table(len(video)), video, audio, {"checkpoint_sha256_12": "x"})


@pytest.mark.parametrize("direction", ["a2v", "v2a"])
@pytest.mark.parametrize("resample", ["video", "audio"])
def test_search_over_index_equals_evaluation(saved, direction, resample):
    """Each clip queries the index (memory-mapped); the position of its partner in our lists is
    the evaluation's rank of that partner (agg, seq, hybrid), and hybrid's list holds exactly
    the first stage's k candidates."""
    video, audio, gallery = saved
    assert isinstance(gallery.video.seq, np.memmap)
    n, k = len(video), 9
    spec = DistanceSpec("euclidean", resample=resample)
    cfg = BlockConfig(query_block=7, candidate_chunk=5)
    want = search.retrieve(video, audio, ("agg", "seq", "hybrid"), k, spec, cfg, directions=(direction,))[direction]
    queries = audio if direction == "a2v" else video
    cand_mod = "video" if direction == "a2v" else "audio"
    cands, normed = gallery.side(cand_mod)
    from scav.retrieve.first_stage import normalize_rows

    for method, width in (("agg", n), ("seq", n), ("hybrid", k)):
        got = rank(queries, normalize_rows(queries.emb), cands, normed, direction, method, width, k, spec,
                   FirstStageConfig(backend="torch"), cfg)
        hit = got.index == np.arange(n)[:, None]
        ranks = torch.from_numpy(np.where(hit.any(1), hit.argmax(1) + 1, 10**9))
        expect = want.ranks[method]
        if method == "hybrid":  # outside the top k the evaluation keeps the agg rank (> k)
            assert torch.equal(ranks[expect <= k], expect[expect <= k])
            assert bool((ranks[expect > k] == 10**9).all())
            first = rank(queries, normalize_rows(queries.emb), cands, normed, direction, "agg", k,
                         first_stage=FirstStageConfig(backend="torch"))
            assert np.array_equal(np.sort(got.index, 1), np.sort(first.index, 1))
        else:
            assert torch.equal(ranks, expect), method
        assert np.all(np.diff(got.scores, axis=1) <= 0)  # ranking order: higher = closer first


def test_hybrid_reads_only_the_candidates(saved):
    """The re-rank reads the first stage's candidates' rows (spans at most 2x dense), not the gallery."""
    video, audio, gallery = saved
    cands = CountingLatents(np.asarray(gallery.video.seq), gallery.video.offsets, np.asarray(gallery.video.emb))
    from scav.retrieve.first_stage import normalize_rows

    CountingLatents.rows_read = 0
    q = Latents(audio.seq[: audio.offsets[3]], audio.offsets[:4], audio.emb[:3])  # 3 queries
    got = rank(q, normalize_rows(q.emb), cands, gallery.normed["video"], "a2v", "hybrid", 4, 4, DistanceSpec(),
               FirstStageConfig(backend="torch"), BlockConfig())
    needed = int(cands.lengths[np.unique(got.index)].sum())
    assert needed <= CountingLatents.rows_read <= 2 * needed < int(cands.offsets[-1])


def test_index_folder_is_whole_and_versioned(saved, tmp_path):
    video, audio, gallery = saved
    meta = json.loads((gallery.folder / "meta.json").read_text())
    assert meta["format"] == "scav-gallery-index" and meta["clips"] == len(video)
    assert not list(gallery.folder.parent.glob(".*tmp*"))
    np.testing.assert_allclose(np.linalg.norm(gallery.normed["audio"], axis=1), 1.0, rtol=1e-6)
    old = tmp_path / "old"
    save_index(old, table(len(video)), video, audio, {})
    m = json.loads((old / "meta.json").read_text())
    (old / "meta.json").write_text(json.dumps({**m, "format_version": 0}))
    with pytest.raises(GalleryIndexError, match="older SCAV.*Rebuild it"):
        load_index(old)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(GalleryIndexError, match="not a SCAV gallery index"):
        save_index(foreign, table(len(video)), video, audio, {})
    assert (foreign / "notes.txt").read_text() == "keep me"


@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("idxcli")
    cache = make_learnable_cache(tmp / "f.zarr", {"train": 5, "test": 11}, lengths=(1.0, 3.0), seed=2)
    obj = ObjectiveConfig(kind="scav", interp="pre", resample="video")
    return tmp, cache, make_checkpoint(tmp, cache, obj, "a.pt", seed=0), make_checkpoint(tmp, cache, obj, "b.pt", seed=1)


def test_index_cli_then_search_and_refusals(cli_setup, tmp_path):
    tmp, cache, ck_a, ck_b = cli_setup
    runner = CliRunner()
    r = runner.invoke(app, ["index", "--checkpoint", str(ck_a), "--cache", str(cache), "--gallery-split", "test",
                            "--device", "cpu", "--json", str(tmp_path / "i.json")])
    assert r.exit_code == 0, r.output
    folder = json.loads((tmp_path / "i.json").read_text())["index"]
    assert f"{cache}.retrieval/index-" in folder and folder.endswith("-test")
    again = runner.invoke(app, ["index", "--checkpoint", str(ck_a), "--cache", str(cache), "--gallery-split", "test",
                                "--device", "cpu"])
    assert again.exit_code == 0 and "up to date" in again.output
    base = ["search", "--index", folder, "--query-clip", "test-0003", "--device", "cpu", "--topk", "5"]
    ok = runner.invoke(app, base + ["--checkpoint", str(ck_a), "--json", str(tmp_path / "hits.jsonl")])
    assert ok.exit_code == 0, ok.output
    rec = json.loads((tmp_path / "hits.jsonl").read_text().splitlines()[0])
    assert len(rec["results"]) == 5 and {r["split"] for r in rec["results"]} == {"test"}
    # the same search without the index (the split encoded now) gives the same list
    now = runner.invoke(app, ["search", "--cache", str(cache), "--gallery-split", "test", "--query-clip", "test-0003",
                              "--device", "cpu", "--topk", "5", "--checkpoint", str(ck_a), "--json", "-"])
    rec_now = json.loads(now.stdout.splitlines()[0])
    assert [x["clip_id"] for x in rec_now["results"]] == [x["clip_id"] for x in rec["results"]]
    assert [x["score"] for x in rec_now["results"]] == pytest.approx([x["score"] for x in rec["results"]], rel=1e-5)
    other = make_random_cache(tmp_path / "o.zarr", {"test": 5}, video_dim=16, audio_dim=24, video_name="clip-vit-b32")
    meta = json.loads(open(f"{folder}/meta.json").read())
    cases = [
        (["--checkpoint", str(ck_b)], "was built with checkpoint"),
        (["--checkpoint", str(ck_a), "--cache", str(other)], "was trained on other encoders: video=pixels"),
    ]
    for extra, msg in cases:
        out = tmp_path / "never.jsonl"
        r = runner.invoke(app, base + extra + ["--json", str(out)])
        assert r.exit_code == 2, (extra, r.output)
        assert msg in " ".join(r.output.split()), (extra, r.output)
        assert not out.exists()
    from scav.core.cache import FeatureCache
    from scav.retrieve.gallery_index import check_index

    with pytest.raises(GalleryIndexError, match="holds audio track 0"):
        check_index(meta, folder, meta["checkpoint_sha256_12"], FeatureCache.open(cache).meta, "spa")
    # an index whose recorded fingerprint is another cache's: refused naming the differing encoder fields
    bad = {**meta, "cache_fingerprint": "0" * 16,
           "cache_meta": {**meta["cache_meta"], "encoders": {**meta["cache_meta"]["encoders"],
                                                             "video": {**meta["cache_meta"]["encoders"]["video"],
                                                                       "name": "clip-vit-b32"}}}}
    (tmp_path / "fp").mkdir()
    import shutil

    shutil.copytree(folder, tmp_path / "fp" / "idx")
    from test_index_integrity import forge

    forge(tmp_path / "fp" / "idx", lambda m: {**bad, "files": m["files"]})  # as if written so (digests, seal)
    r = runner.invoke(app, ["search", "--index", str(tmp_path / "fp" / "idx"), "--query-clip", "test-0003",
                            "--device", "cpu", "--checkpoint", str(ck_a), "--cache", str(cache)])
    assert r.exit_code == 2 and "other encoders" in r.output and "video.name" in r.output, r.output
    # an index from an older format version: a rebuild hint
    (tmp_path / "fp" / "idx" / "meta.json").write_text(json.dumps({**meta, "format_version": 0}))
    r = runner.invoke(app, ["search", "--index", str(tmp_path / "fp" / "idx"), "--query-clip", "test-0003",
                            "--device", "cpu", "--checkpoint", str(ck_a)])
    assert r.exit_code == 2 and "Rebuild it: scav-retrieve index" in " ".join(r.output.split()), r.output


def test_saved_ivf_is_used_and_probing_all_lists_is_exact(cli_setup, tmp_path):
    from scav.retrieve.search_command import run_index, run_search
    from scav.retrieve.search_config import IndexRequest, SearchRequest

    tmp, cache, ck_a, _ = cli_setup
    built = run_index(IndexRequest(checkpoint=str(ck_a), cache=str(cache), out=str(tmp_path / "ivf"), ann="ivf",
                                   nlist=2, device="cpu"))
    meta = json.loads((tmp_path / "ivf" / "meta.json").read_text())
    assert built["clips"] == 16 and {m: v["kind"] for m, v in meta["ann"].items()} == {"video": "ivf", "audio": "ivf"}
    common = dict(checkpoint=str(ck_a), index=built["index"], query_split="test", method="agg", topk=6, device="cpu")
    approx = run_search(SearchRequest(ann="ivf", nprobe=2, **common))
    exact = run_search(SearchRequest(**common))
    assert "ivf nlist=2 nprobe=2" in approx.first_stage and "exact" in exact.first_stage
    for a, e in zip(approx.records, exact.records):
        assert [x["clip_id"] for x in a["results"]] == [x["clip_id"] for x in e["results"]]
