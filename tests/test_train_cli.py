"""scav-train CLI: same result as run(cfg), defaults from the dataclasses, the removed
--direction refused, fast --help, clean errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from cache_factory import make_learnable_cache, make_random_cache
from scav.model.checkpoint import load_model, save_checkpoint
from scav.model.network import SCAVModel
from scav.train.cli import app
from scav.model.config import ModelConfig, ObjectiveConfig
from scav.train.config import TrainConfig
from scav.train.loop import run
from typer.testing import CliRunner

ARGS = ["--steps", "4", "--batch-size", "6", "--val-clips", "6", "--val-every", "2", "--log-every", "1",
        "--warmup", "1", "--c", "16", "--video-layers", "1", "--audio-layers", "1", "--heads", "2", "--device", "cpu"]


def _losses(out):
    return [e["loss"] for e in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if e["event"] == "train"]


def test_cli_and_run_give_the_same_result(tmp_path):
    cache = make_learnable_cache(tmp_path / "c.zarr", {"train": 20}, video_dim=8, audio_dim=8)
    res = CliRunner().invoke(app, ["--cache", str(cache), "--out", str(tmp_path / "cli"), *ARGS])
    assert res.exit_code == 0, res.output
    cfg = TrainConfig(cache=str(cache), out=str(tmp_path / "api"), steps=4, batch_size=6, val_clips=6, val_every=2,
                      log_every=1, warmup_steps=1, device="cpu",
                      model=ModelConfig(c=16, video_layers=1, audio_layers=1, heads=2))
    run(cfg)
    cli_cfg = json.loads((tmp_path / "cli" / "config.json").read_text())
    api_cfg = json.loads((tmp_path / "api" / "config.json").read_text())
    assert {**cli_cfg, "out": ""} == {**api_cfg, "out": ""}
    assert cli_cfg["objective"]["interp"] == "pre"  # default for scav + euclidean
    np.testing.assert_array_equal(_losses(tmp_path / "cli"), _losses(tmp_path / "api"))


@pytest.fixture
def captured(monkeypatch):
    """Invoke the CLI without training: -> (exit code, output, the TrainConfig it built or None)."""
    seen = []

    def fake_run(cfg):
        seen.append(cfg)
        return {"steps": 0}

    monkeypatch.setattr("scav.train.loop.run", fake_run)

    def invoke(*args):
        res = CliRunner().invoke(app, ["--cache", "c.zarr", "--out", "r", *args])
        return res.exit_code, res.output, (seen.pop() if seen else None)

    return invoke


def test_cli_defaults_are_the_dataclass_defaults(captured):
    code, out, cfg = captured()
    assert code == 0, out
    assert cfg == TrainConfig(cache="c.zarr", out="r")  # every default comes from the dataclasses
    # the default interp, applied in one place: pre only for SCAV with the Euclidean distance
    assert captured("--objective", "cav")[2].objective.interp == "post"
    assert captured("--objective", "cav+scav")[2].objective.interp == "pre"
    assert captured("--distance", "soft_dtw")[2].objective.interp == "post"
    assert captured("--distance", "wasserstein", "--interp", "post")[2].objective.interp == "post"
    assert captured("--no-normalize")[2].objective.normalize is False


def test_default_out_names_the_objective(monkeypatch):
    seen = []
    monkeypatch.setattr("scav.train.loop.run", lambda cfg: seen.append(cfg) or {"steps": 0})
    res = CliRunner().invoke(app, ["--cache", "c.zarr", "--objective", "cav", "--resample", "audio"])
    assert res.exit_code == 0, res.output
    assert seen[0].out == "runs/cav-euclidean-post-audio"


def test_removed_direction_flag_and_key_are_refused(captured, tmp_path):
    """--direction (renamed --resample before 0.1.0) is an unknown option, and a config or
    checkpoint that still says objective.direction is refused in one line, not guessed."""
    code, out, cfg = captured("--direction", "v2a")
    assert code == 2 and cfg is None and "No such option" in out
    cache = make_random_cache(tmp_path / "c.zarr", {"train": 10}, video_dim=4, audio_dim=4)
    cfg = TrainConfig(cache=str(cache), out=str(tmp_path / "r"), model=ModelConfig(c=8, video_layers=1, audio_layers=1,
                      heads=2, video_mlp_hidden=8, audio_mlp_hidden=8),
                      objective=ObjectiveConfig(interp="post", resample="audio"))
    old = cfg.to_dict()
    old["objective"] = {k: v for k, v in old["objective"].items() if k != "resample"} | {"direction": "a2v"}
    with pytest.raises(ValueError, match="direction"):
        TrainConfig.from_dict(old)
    from scav.core.cache import FeatureCache
    from scav.model.checkpoint import CheckpointError, make_payload

    model = SCAVModel(cfg.model, 4, 4, cfg.objective)
    payload = make_payload(model, cfg, FeatureCache.open(cache).meta, step=3)
    payload["config"] = old
    save_checkpoint(tmp_path / "old.pt", payload)
    with pytest.raises(CheckpointError, match="direction"):
        load_model(tmp_path / "old.pt")


def test_help_explains_options_without_importing_torch():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from scav.train.cli import app\n"
        "r = CliRunner().invoke(app, ['--help'])\n"
        "print(r.output)\n"
        "print('TORCH_LOADED' if 'torch' in sys.modules else 'TORCH_ABSENT')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "TORCH_ABSENT" in out
    for opt in ("--cache", "--objective", "--distance", "--interp", "--resample", "--no-normalize", "--resume", "--crop"):
        assert opt in out
    assert "--direction" not in out  # deprecated alias: accepted, not advertised
    assert "[default: 250000]" in out and "<cav|scav|cav+scav>" in out  # from the dataclass and OBJECTIVES
    assert "started again from step 0" in out  # what --resume does without last.pt


def test_bad_input_exits_nonzero_with_a_message(tmp_path):
    cache = make_random_cache(tmp_path / "c.zarr", {"train": 10}, video_dim=4, audio_dim=4)
    runner = CliRunner()
    cases = [
        (["--cache", str(tmp_path / "none.zarr")], "no cache at"),
        (["--cache", str(cache), "--batch-size", "64"], "larger than the"),
        (["--cache", str(cache), "--val-clips", "10"], "smaller --val-clips"),
        (["--cache", str(cache), "--distance", "soft_dtw", "--interp", "pre"], "only applies to the 'euclidean'"),
        (["--cache", str(cache), "--device", "gpu"], "device must be one of"),
        (["--cache", str(cache), "--objective", "clip"], "is not one of"),
    ]
    for extra, msg in cases:
        args = [*ARGS, "--out", str(tmp_path / "r"), *extra]
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (extra, res.output)
        assert msg in res.output and "Traceback" not in res.output, res.output
