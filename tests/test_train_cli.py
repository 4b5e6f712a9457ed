"""scav-train CLI: same result as run(cfg), fast --help, clean errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from typer.testing import CliRunner

from scav.train.cli import app, build_config
from scav.train.loop import run

from cache_factory import make_learnable_cache, make_random_cache

ARGS = ["--steps", "4", "--batch-size", "6", "--val-clips", "6", "--val-every", "2", "--log-every", "1",
        "--warmup", "1", "--c", "16", "--video-layers", "1", "--audio-layers", "1", "--heads", "2", "--device", "cpu"]


def _losses(out):
    return [e["loss"] for e in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if e["event"] == "train"]


def test_cli_and_run_give_the_same_result(tmp_path):
    cache = make_learnable_cache(tmp_path / "c.zarr", {"train": 20}, video_dim=8, audio_dim=8)
    res = CliRunner().invoke(app, ["--cache", str(cache), "--out", str(tmp_path / "cli"), *ARGS])
    assert res.exit_code == 0, res.output
    cfg = build_config(str(cache), str(tmp_path / "api"), steps=4, batch_size=6, val_clips=6, val_every=2, log_every=1,
                       warmup=1, c=16, video_layers=1, audio_layers=1, heads=2, device="cpu")
    run(cfg)
    cli_cfg = json.loads((tmp_path / "cli" / "config.json").read_text())
    api_cfg = json.loads((tmp_path / "api" / "config.json").read_text())
    assert {**cli_cfg, "out": ""} == {**api_cfg, "out": ""}
    assert cli_cfg["objective"]["interp"] == "pre"  # default for scav + euclidean
    np.testing.assert_array_equal(_losses(tmp_path / "cli"), _losses(tmp_path / "api"))


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


def test_bad_input_exits_nonzero_with_a_message(tmp_path):
    cache = make_random_cache(tmp_path / "c.zarr", {"train": 10}, video_dim=4, audio_dim=4)
    runner = CliRunner()
    cases = [
        (["--cache", str(tmp_path / "none.zarr")], "no cache at"),
        (["--cache", str(cache), "--batch-size", "64"], "larger than the"),
        (["--cache", str(cache), "--val-clips", "10"], "smaller --val-clips"),
        (["--cache", str(cache), "--distance", "soft_dtw", "--interp", "pre"], "only applies to the 'euclidean'"),
    ]
    for extra, msg in cases:
        args = [*ARGS, "--out", str(tmp_path / "r"), *extra]
        res = runner.invoke(app, args)
        assert res.exit_code == 2, (extra, res.output)
        assert msg in res.output and "Traceback" not in res.output, res.output
