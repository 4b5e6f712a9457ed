"""Issue 23: data strings are data (never rich markup), piped output keeps ids whole and errors
on one line, and R@K with K above the candidates says so."""

import json

import pytest
from cache_factory import make_learnable_cache
from scav.retrieve.cli import app
from test_retrieve_cli import make_checkpoint
from typer.testing import CliRunner

try:
    from scav.model.config import ObjectiveConfig
except ImportError:  # before the model configs moved to scav.model
    from scav.train.config import ObjectiveConfig

HOSTILE = "[/bold]disc-s3-" + "x" * 90 + "[red]"


def test_scav_dub_summary_prints_hostile_paths_as_text(capsys):
    from scav.dub.cli import print_summary

    check = {"value": 1.0, "passed": False, "threshold": 2.0, "unit": "x"}
    summary = {
        "quality": [{"path": HOSTILE, "language": "[b]", "passed": False,
                     "checks": {k: check for k in ("duration", "onsets", "loudness", "background")}}],
        "stages": {"tts": "[/i]"}, "targets": ["spa"], "files": 1, "clips": 1, "already_done": 0, "dubbed": 1,
        "failed": 1, "failed_by_stage": {"tts": 1}, "quality_failed": 1, "timings": {"tts": 1.0}, "seconds": 1.0,
        "manifest": HOSTILE, "report": "r.csv",
        "failures": [{"path": HOSTILE, "language": "spa", "stage": "tts", "reason": "[/]oops"}],
    }
    print_summary(summary)
    out = capsys.readouterr().out
    assert HOSTILE in out and "[/]oops" in out and "FAIL" in out and "[red]FAIL" not in out


def test_print_error_is_one_unwrapped_line(capsys):
    from scav.core.cli import print_error

    print_error(f"no clip {HOSTILE!r} in /a/long/path/" + "y" * 100)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and HOSTILE in err and err.startswith("error: ")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("out")
    cache = make_learnable_cache(tmp / "f.zarr", {"test": 2, "val": 12}, lengths=(1.0, 2.0), seed=3)
    ck = make_checkpoint(tmp, cache, ObjectiveConfig(kind="scav", interp="post", resample="audio"), "c.pt")
    return tmp, cache, ck


def test_recall_at_k_above_the_candidates_is_noted(tiny):
    tmp, cache, ck = tiny
    r = CliRunner().invoke(app, ["--split", "test", "--checkpoint", str(ck), "--cache", str(cache), "--device", "cpu",
                                 "--method", "agg"])
    assert r.exit_code == 0, r.output
    assert "R@5/R@10: K exceeds the 2 candidates" in r.output
    big = CliRunner().invoke(app, ["--split", "val", "--checkpoint", str(ck), "--cache", str(cache), "--device", "cpu",
                                   "--method", "agg"])
    assert big.exit_code == 0 and "R@10: K exceeds" not in big.output and "R@5/R@10" not in big.output


def test_search_table_shows_hostile_labels_and_whole_ids_when_piped(tiny, tmp_path):
    from scav.model import stored_latents as SL
    from test_index_integrity import forge

    tmp, cache, ck = tiny
    out = tmp_path / "idx"
    r = CliRunner().invoke(app, ["index", "--checkpoint", str(ck), "--cache", str(cache), "--out", str(out),
                                 "--device", "cpu"])
    assert r.exit_code == 0, r.output
    clips = json.loads((out / "clips.json").read_text())
    clips["label"] = [HOSTILE] * len(clips["label"])
    clips["source"] = ["[/bold]"] * len(clips["source"])
    (out / "clips.json").write_text(json.dumps(clips))
    forge(out)
    assert SL.open_sealed(out)
    r = CliRunner().invoke(app, ["search", "--index", str(out), "--cache", str(cache), "--checkpoint", str(ck),
                                 "--query-split", "test", "--device", "cpu", "--topk", "3"])
    assert r.exit_code == 0, r.output
    assert HOSTILE in r.output and "[/bold]" in r.output


class _NotData:
    """An object torch's weights_only loader refuses to unpickle."""


def test_pickle_refusal_gives_no_weights_only_false_advice(tmp_path):
    import torch
    from scav.model.checkpoint import CheckpointError, read_checkpoint

    torch.save({"model": _NotData()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(tmp_path / "evil.pt")
    msg = str(e.value)
    assert "does not unpickle" in msg and "weights_only" not in msg and "False" not in msg
    assert e.value.__cause__ is None and e.value.__suppress_context__
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")  # torch's refusal of a non-pickle gives the advice too
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(tmp_path / "junk.pt")
    assert "not a readable SCAV checkpoint" in str(e.value) and "weights_only" not in str(e.value)
