"""scav-dub never harms its input, and two runs on one --out never lose each other's work (issue 24).

One test per row of the issue's table: --out = the manifest's folder, the media under --out,
two targets in two runs, a kill -9 leaving temporaries; plus the writer lock and --keep-stages.
Stand-in stages from tests/test_dub_pipeline.py (fast, no espeak-ng).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import filelock
import pytest
from test_dub_pipeline import build, cfg_for, doubles, invoke, packets, stream_info  # noqa: F401 (build: fixture)

from scav.core.writer_lock import LOCK_FILE
from scav.data_manifests.manifest import load_manifest, write_manifest
from scav.dub.pipeline import run


def md5s(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def inputs(build, tmp_path) -> Path:  # noqa: F811
    """A private copy of the synthetic build (manifest.csv, media/*.mp4, events.json)."""
    folder = tmp_path / "in"
    shutil.copytree(build, folder)
    return folder


def refused(manifest: Path, out: Path, *extra) -> str:
    r = invoke(manifest, "--out", out, "-t", "fra", "--no-progress", *extra)
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.output, r.output
    return lines[0]


def test_out_equal_to_the_manifest_folder_is_refused_and_nothing_is_written(inputs):
    before = md5s(inputs)
    assert "contains an input" in refused(inputs / "manifest.csv", inputs)
    assert md5s(inputs) == before  # the manifest (and everything else) untouched, no file added


def test_out_that_holds_the_media_is_refused(inputs, tmp_path):
    before = md5s(inputs)
    line = refused(inputs / "manifest.csv", tmp_path)  # the media lie under --out (in/media/*.mp4)
    assert "contains an input" in line
    assert md5s(inputs) == before
    # a manifest elsewhere that names the media by absolute path: the same refusal
    (tmp_path / "m").mkdir()
    rows = load_manifest(inputs / "manifest.csv")
    write_manifest([dataclasses.replace(r, path=str(inputs / r.path)) for r in rows], tmp_path / "m" / "x.csv")
    line = refused(tmp_path / "m" / "x.csv", inputs / "media" / "..")
    assert "contains an input" in line and "disc-s" in line
    assert md5s(inputs) == before


def test_out_inside_the_media_folder_and_keep_stages_over_inputs_are_refused(inputs, tmp_path):
    before = md5s(inputs)
    assert "lies inside the folder of the input media" in refused(inputs / "manifest.csv", inputs / "media" / "dub")
    assert "--keep-stages" in refused(inputs / "manifest.csv", tmp_path / "out", "--keep-stages", inputs)
    assert md5s(inputs) == before and not (tmp_path / "out").exists()


def test_two_targets_in_two_runs_are_both_kept(inputs, tmp_path):
    out = tmp_path / "out"
    before = md5s(inputs)
    first = run(cfg_for(inputs, out, targets=("fra",)), stages=doubles(inputs))
    media = out / "media" / "media" / "disc-s0.mp4"
    fra_packets = packets(media)
    second = run(cfg_for(inputs, out, targets=("deu",)), stages=doubles(inputs))
    assert (first["done"], second["done"], second["dubbed"], second["failed"]) == (2, 2, 2, 0)
    assert md5s(inputs) == before
    for name in ("disc-s0.mp4", "disc-s1.mp4"):
        audio = [s["language"] for s in stream_info(out / "media" / "media" / name) if s["type"] == "audio"]
        assert audio == ["eng", "spa", "fra", "deu"], audio
    # the fra track (and every original stream) is the first run's, byte for byte
    now = packets(media)
    for k in fra_packets:
        assert now[k] == fra_packets[k], k
    src = packets(inputs / "media" / "disc-s0.mp4")
    for k in src:
        assert now[k] == src[k]
    assert {(q["output"], q["language"]) for q in second["quality"]} == \
        {(f"media/media/disc-s{i}.mp4", lang) for i in (0, 1) for lang in ("fra", "deu")}
    assert all(q["passed"] for q in second["quality"]), second["quality"]
    # both are done now: asking for either (or both) again does nothing
    again = run(cfg_for(inputs, out, targets=("fra", "deu")), stages=doubles(inputs))
    assert (again["already_done"], again["dubbed"]) == (2, 0)
    # making fra again (other stages) replaces only the fra track; deu stays
    redo = run(cfg_for(inputs, out, targets=("fra",)), stages=doubles(inputs, voice=_Quiet()))
    assert redo["dubbed"] == 2
    after = packets(media)
    assert [s["language"] for s in stream_info(media) if s["type"] == "audio"] == ["eng", "spa", "deu", "fra"]
    assert after[3] == now[4]  # the deu packets, now the third audio stream
    assert {q["language"] for q in redo["quality"]} == {"fra", "deu"}


class _Quiet:
    name = "quiet"

    def convert(self, audio, reference):
        return audio.__class__(audio.samples * 0.5, audio.sample_rate)


def test_a_second_writer_on_the_same_out_is_refused(inputs, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import filelock, sys, time; l = filelock.FileLock(sys.argv[1]); l.acquire(); print('held', flush=True); "
        "time.sleep(60)"), str(out / LOCK_FILE)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ValueError, match="being written by another scav-dub run"):
            run(cfg_for(inputs, out, targets=("fra",)), stages=doubles(inputs))
        assert "being written by another scav-dub run" in refused(inputs / "manifest.csv", out)
        assert not (out / "media").exists()
    finally:
        holder.kill()
        holder.wait()
    s = run(cfg_for(inputs, out, targets=("fra",), limit=1), stages=doubles(inputs))  # free again
    assert s["done"] == 1
    with filelock.FileLock(str(out / LOCK_FILE), timeout=0):
        pass  # released after the run


def test_temporaries_of_dead_processes_are_swept_and_a_live_writers_kept(inputs, tmp_path):
    out = tmp_path / "out"
    run(cfg_for(inputs, out, targets=("fra",), limit=1), stages=doubles(inputs))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    pid = int(dead.stdout)  # a process that has exited: what kill -9 leaves behind
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = [out / f".failures.tmp-{pid}.csv", out / f".manifest.tmp-{pid}.csv",
                 out / f".dub_report.tmp-{pid}.json", out / "records" / "media" / f".disc-s0.mp4.tmp-{pid}.json",
                 out / "media" / "media" / f".disc-s1.tmp-{pid}.mp4"]
        kept = out / f".failures.tmp-{live.pid}.csv"
        for p in [*stale, kept]:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"half")
        s = run(cfg_for(inputs, out, targets=("fra",)), stages=doubles(inputs))
        assert s["done"] == 2
        assert [p for p in stale if p.exists()] == []
        assert kept.exists()  # another live process's temporary is never removed
    finally:
        live.kill()
        live.wait()
    left = [p.name for p in out.rglob(".*tmp-*")]
    assert left == [kept.name], left
    assert os.path.getsize(out / "media" / "media" / "disc-s1.mp4") > 1000
