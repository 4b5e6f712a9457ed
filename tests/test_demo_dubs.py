"""The dubs demo's report (rows, table, figure) from an evaluation dict, and (slow) the whole
demo on a tiny synthetic set."""

from __future__ import annotations

import pytest
from scav.demo import dubs as demo_dubs


def _ret(r1):
    return {m: {d: {"R@1": r1, "R@5": r1, "R@10": r1} for d in ("a2v", "v2a")} for m in ("agg", "seq", "hybrid")}


def _eval(inv):
    tracks = {lang: {"agg": {"invariance": inv - 1, "track_R@1": 50.0}, "seq": {"invariance": inv, "track_R@1": 90.0},
                     "retrieval": _ret(80.0)} for lang in demo_dubs.LANGUAGES[1:]}
    return {"clips": 12, "stand_in_encoders": True, "retrieval_reference": _ret(90.0), "tracks": tracks}


def test_rows_table_and_figure(tmp_path):
    rows = demo_dubs.summary_rows({"monolingual": _eval(0.5), "multilingual": _eval(0.9)})
    assert len(rows) == 2 * len(demo_dubs.LANGUAGES)
    ref = [r for r in rows if r["query_track"] == demo_dubs.LANGUAGES[0]]
    assert all(r["seq_invariance"] is None and r["seq_a2v_R@1"] == 90.0 for r in ref)
    dub = {(r["model"], r["query_track"]): r for r in rows}
    assert dub[("dub-augmented", "spa")]["seq_invariance"] == 0.9 and dub[("monolingual", "fra")]["agg_invariance"] == -0.5
    demo_dubs.render(rows, "t")  # every cell formats
    png = demo_dubs.plot(rows, tmp_path / "r.png", stand_in=True)
    assert png.stat().st_size > 10_000


@pytest.mark.slow
def test_the_whole_dubs_demo_runs_small(tmp_path):
    cfg = demo_dubs.DubsDemoConfig(out=str(tmp_path), steps=6, batch_size=8, val_clips=8, val_every=3, warmup_steps=1,
                                   probe_epochs=3, data=dict(classes=2, sources_per_class=4, clips_per_source=6))
    res = demo_dubs.run(cfg)
    assert res["stand_in_encoders"] and (tmp_path / "dubs" / "results.png").is_file()
    assert {r["model"] for r in res["rows"]} == {"monolingual", "dub-augmented"}
