"""Writers killed inside a checkpoint write (kill -9) leave ``.NAME.tmp-PID.pt`` files:
the next save of that file and the start of a run in the folder remove them, keep the
live files intact, and leave alone the temporaries of processes still running."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from cache_factory import make_learnable_cache
from scav.model.checkpoint import read_checkpoint, save_checkpoint
from scav.train import loop
from scav.model.config import ModelConfig, ObjectiveConfig
from scav.train.config import TrainConfig

TINY = ModelConfig(c=16, video_layers=1, audio_layers=1, heads=2, video_mlp_hidden=32, audio_mlp_hidden=32)

# save_checkpoint with torch.save slowed down: it writes part of the file, says where, then hangs
_KILLED_WRITER = textwrap.dedent("""
    import sys, time, torch
    from scav.model import checkpoint

    def half_written(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"PK half a checkpoint")
        print(f, flush=True)
        time.sleep(600)

    torch.save = half_written
    checkpoint.save_checkpoint(sys.argv[1], {"step": 99})
""")


def kill_inside_a_write(target: Path) -> Path:
    """Run save_checkpoint(target) in a real process, SIGKILL it mid-write; -> the temporary it left."""
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        tmp = Path(proc.stdout.readline().strip())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert tmp.name == f".{target.stem}.tmp-{proc.pid}{target.suffix}" and tmp.is_file()
    return tmp


@pytest.fixture
def live_process():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield proc.pid
    proc.kill()
    proc.wait(timeout=30)


def _cfg(cache, out, **kw) -> TrainConfig:
    return TrainConfig(cache=str(cache), out=str(out), val_clips=4, val_every=2, steps=2, batch_size=8,
                       warmup_steps=1, log_every=1, model=TINY, objective=ObjectiveConfig(), **kw)


def test_next_save_removes_a_killed_writers_temporary(tmp_path, live_process):
    target = tmp_path / "last.pt"
    save_checkpoint(target, {"step": 1})
    stale = kill_inside_a_write(target)
    live = tmp_path / f".last.tmp-{live_process}.pt"  # another writer, still at work
    live.write_bytes(b"in progress")
    assert torch.load(target, weights_only=True) == {"step": 1}  # the kill left the live file intact
    save_checkpoint(target, {"step": 2})
    assert not stale.exists() and live.exists()
    assert torch.load(target, weights_only=True) == {"step": 2}


def test_resumed_run_clears_dead_writers_temporaries_of_its_folder(tmp_path, live_process):
    cache = make_learnable_cache(tmp_path / "c.zarr", {"train": 28}, video_dim=8, audio_dim=8)
    out = tmp_path / "run"
    loop.run(_cfg(cache, out))
    before = read_checkpoint(out / "last.pt")
    stale = [kill_inside_a_write(out / "last.pt"),
             kill_inside_a_write(out / "ckpt" / "step_0000006.pt"),  # a step that is never written again
             kill_inside_a_write(out / "averaged.pt")]
    live = out / "ckpt" / f".step_0000006.tmp-{live_process}.pt"
    live.write_bytes(b"in progress")
    assert read_checkpoint(out / "last.pt")["step"] == before["step"] == 2  # intact after the kills

    summary = loop.run(dataclasses.replace(_cfg(cache, out), steps=4, resume=True))
    assert summary["steps"] == 4
    assert not any(p.exists() for p in stale)
    assert live.exists()
    assert read_checkpoint(out / "last.pt")["step"] == 4
    leftovers = sorted(p.name for p in out.rglob(".*tmp-*"))
    assert leftovers == [live.name]
