"""`scav-extract` end to end: dispatch, help without torch, datasets, inspect, and kill -9 + resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cache_factory import assert_same_contents, cache_contents

from scav.core.cache import FeatureCache
from scav.data_manifests.manifest import ManifestRow, write_manifest
from scav.data_manifests.media import AudioSpec, write_media
from scav.extract.cli import main

from extract_cli import cli
from scav.extract.runner import ExtractConfig, run

PY = sys.executable


def tiny_clip(path: Path, seconds: float = 1.0, fps: float = 25, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (int(seconds * fps), 24, 32, 3), dtype=np.uint8)
    audio = AudioSpec(rng.uniform(-0.5, 0.5, (1, int(seconds * 16000))).astype(np.float32), 16000)
    return write_media(path, frames, fps=fps, audio=[audio])


@pytest.fixture(scope="module")
def twelve(tmp_path_factory):
    folder = tmp_path_factory.mktemp("twelve")
    rows = []
    for i in range(12):
        tiny_clip(folder / "media" / f"v{i}.mp4", seconds=0.6 + 0.1 * i, fps=(24, 25, 30)[i % 3], seed=i)
        rows.append(ManifestRow(f"clip{i:02d}", f"media/v{i}.mp4", split="train", label=f"l{i % 3}"))
    return folder, write_manifest(rows, folder / "m.csv")




def test_help_is_fast_and_imports_no_torch():
    code = (
        "import sys\nfrom scav.extract.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "bad = [m for m in ('torch', 'transformers', 'zarr') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "scav-extract" in out.stdout and "vggsound" in out.stdout and "inspect" in out.stdout


def test_csv_dispatch_equals_run(twelve, tmp_path, capsys):
    folder, manifest = twelve
    assert cli(str(manifest), "--out", str(tmp_path / "cli.zarr"), "--no-progress", "--json", "-") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["extracted"] == 12
    run(ExtractConfig(manifest=manifest, out=tmp_path / "run.zarr", progress=False))
    assert_same_contents(cache_contents(tmp_path / "cli.zarr"), cache_contents(tmp_path / "run.zarr"))
    # inspect: table and JSON
    assert cli("inspect", str(tmp_path / "cli.zarr")) == 0
    assert "pixels (stand-in)" in capsys.readouterr().out
    assert cli("inspect", str(tmp_path / "cli.zarr"), "--json", "-") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["clips"] == 12 and info["splits"] == {"train": 12} and info["failure_rows"] == []


def test_mismatched_cache_is_a_clear_error(twelve, tmp_path, capsys, monkeypatch):
    from scav.core.schema import EncoderInfo
    from scav.extract import runner

    folder, manifest = twelve
    out = tmp_path / "f.zarr"
    assert cli(str(manifest), "--out", str(out), "--no-progress", "--split", "train") == 0

    class Other:
        info = EncoderInfo("clip-vit-b32", 512, checksum="abc")

    monkeypatch.setattr(runner, "build_encoders", lambda spec, device="cpu": (Other(), Other()))
    capsys.readouterr()
    assert cli(str(manifest), "--out", str(out), "--no-progress") == 2
    err = capsys.readouterr().err
    assert "error:" in err and "pixels" in err and "clip-vit-b32" in err


def test_kill_minus_9_then_rerun_completes_exactly_once(twelve, tmp_path):
    folder, manifest = twelve
    ref = tmp_path / "ref.zarr"
    run(ExtractConfig(manifest=manifest, out=ref, progress=False, part_clips=2))
    out = tmp_path / "killed.zarr"
    cmd = [PY, "-m", "scav.extract.cli", str(manifest), "--out", str(out), "--part-clips", "2", "--no-progress",
           "--decode-threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    parts = out / "parts"
    deadline = time.time() + 60
    try:
        while time.time() < deadline and proc.poll() is None:
            if parts.is_dir() and any(p.name.startswith("p-") for p in parts.iterdir()):
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    committed = len(FeatureCache.open(out))
    assert 0 < committed < 12, f"kill landed after {committed} clips: the test did not interrupt the run"
    rerun = subprocess.run(cmd[:-2] + ["--json", "-"], capture_output=True, text=True, env=env, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["already_present"] == committed and summary["extracted"] == 12 - committed
    cache = FeatureCache.open(out)
    ids = [c.clip_id for p in cache.parts for c in p.clips]
    assert sorted(ids) == [f"clip{i:02d}" for i in range(12)]  # every clip exactly once
    assert not any((out / ".staging").iterdir())
    assert_same_contents(cache_contents(ref), cache_contents(out))


def test_vggsound_real_test_list_with_three_media(tmp_path, capsys, monkeypatch):
    lst = Path("/work/shared/data/vggsound/test.csv")
    if not lst.is_file():
        pytest.skip("shared VGGSound test list not available")
    first = [line.split(",", 1)[0] for line in lst.read_text().splitlines()[:40]]
    names = [first[0], first[7], first[33]]  # rows 34+ include quoted labels with commas
    media = tmp_path / "data" / "vggsound" / "media"
    for i, n in enumerate(names):
        tiny_clip(media / n, seconds=0.7, seed=i)
    monkeypatch.chdir(tmp_path)  # defaults: ./data/vggsound/media
    out = tmp_path / "out" / "features.zarr"
    code = cli("vggsound", "--list", str(lst), "--out", str(out), "--gpus", "0", "--no-progress", "--json", "-",
               "--stand-in")
    assert code == 0
    text = capsys.readouterr().out
    summary = json.loads(text[: text.rindex("}") + 1])
    assert summary["extracted"] == 3
    cache = FeatureCache.open(out)
    assert {c.clip_id for c in cache.clips()} == {n[:-4] for n in names}
    assert cache.splits() == {"vggsound-test": 3}
    c0 = cache.info(names[0][:-4])
    assert c0.source == names[0][:-4].rsplit("_", 1)[0] and c0.label
    manifests = Path(str(out) + ".manifests")
    missing = (manifests / "vggsound_missing_media.csv").read_text().splitlines()
    assert len(missing) - 1 == 15446 - 3
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["features.zarr", "features.zarr.manifests"]


def test_music_builder_cli(tmp_path, capsys):
    videos = {"videos": {"flute": ["fA", "fB", "fC"], "cello": ["cA", "cB"]}}
    (tmp_path / "music.json").write_text(json.dumps(videos))
    rng = np.random.default_rng(0)
    for ytid, seconds in (("fA", 21.0), ("cA", 10.5), ("cB", 9.0)):
        frames = rng.integers(0, 256, (int(seconds * 2), 24, 32, 3), dtype=np.uint8)
        write_media(tmp_path / "media" / f"{ytid}.mp4", frames, fps=2,
                    audio=[AudioSpec(rng.uniform(-0.3, 0.3, (1, int(seconds * 8000))).astype(np.float32), 8000)])
    out = tmp_path / "f.zarr"
    code = cli("music", "--list", str(tmp_path / "music.json"), "--media-root", str(tmp_path / "media"),
               "--out", str(out), "--no-progress", "--stand-in")
    assert code == 0
    cache = FeatureCache.open(out)
    assert sorted(c.clip_id for c in cache.clips()) == ["cA_000000", "fA_000000", "fA_000010"]
    for c in cache.clips():
        assert c.n_video == 20 and c.label == ("flute" if c.clip_id[0] == "f" else "cello")
        assert c.split in ("music-train", "music-test") and c.source == c.clip_id[:2]
    report = (Path(str(out) + ".manifests") / "music_missing_media.csv").read_text()
    assert "fB" in report and "fC" in report and "cB" in report  # absent, absent, shorter than 10 s
