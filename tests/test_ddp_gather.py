"""Global negatives across 2 real processes (gloo): same loss and gradients as one
process on the concatenated batch."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from scav.model.network import SCAVModel
from scav.model.objective import compute_loss
from scav.model.config import ModelConfig, ObjectiveConfig
from scav.train.config import TrainConfig
from scav.model.gather import gather_features, gather_sequences
from scav.train.ddp import DistInfo, cleanup

TINY = ModelConfig(c=16, video_layers=1, audio_layers=1, heads=2, video_mlp_hidden=24, audio_mlp_hidden=24, dropout=0.0)
CASES = {
    "cav": ObjectiveConfig(kind="cav", interp="post"),
    "scav_pre_v2a": ObjectiveConfig(kind="scav", interp="pre", resample="video"),
    "scav_post_a2v": ObjectiveConfig(kind="scav", interp="post", resample="audio"),
    "cav+scav_softdtw": ObjectiveConfig(kind="cav+scav", distance="soft_dtw", interp="post"),
}
N, WORLD = 3, 2  # clips per rank


def _full_batch():
    g = torch.Generator().manual_seed(1)
    # rank 0's clips are all shorter than rank 1's: the gather must pad to a common length
    v_len = torch.tensor([3, 5, 4, 9, 7, 8])
    a_len = torch.tensor([2, 3, 2, 5, 6, 4])
    v = torch.randn(2 * N, 9, 6, generator=g)
    a = torch.randn(2 * N, 6, 5, generator=g)
    vm = torch.arange(9)[None] < v_len[:, None]
    am = torch.arange(6)[None] < a_len[:, None]
    return v * vm[..., None], vm, a * am[..., None], am


def _local(rank):
    v, vm, a, am = _full_batch()
    sl = slice(rank * N, (rank + 1) * N)
    v, vm, a, am = v[sl], vm[sl], a[sl], am[sl]
    tv, ta = int(vm.sum(1).max()), int(am.sum(1).max())
    return v[:, :tv], vm[:, :tv], a[:, :ta], am[:, :ta]


def _loss_and_grads(model, net, batch, obj, info):
    out = net(*batch)
    losses = compute_loss(out, model, obj, info)
    losses["loss"].backward()
    return losses["loss"].detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _worker(rank, init_file, path):
    torch.set_num_threads(1)
    # rendezvous through a file, not a TCP port: no race for a "free" port with other processes
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    info = DistInfo(rank=rank, world_size=WORLD)
    results = {}
    for name, obj in CASES.items():
        torch.manual_seed(0)
        model = SCAVModel(TINY, 6, 5, obj)
        net = torch.nn.parallel.DistributedDataParallel(model)  # averages the gradients
        loss, grads = _loss_and_grads(model, net, _local(rank), obj, info)
        dist.all_reduce(loss)
        results[name] = (loss / WORLD, grads)
    # gather helpers on their own: rank order, padding to the longest rank
    seq, mask = gather_sequences(torch.full((N, 2 + 3 * rank, 1), float(rank)), torch.ones(N, 2 + 3 * rank, dtype=torch.bool))
    results["gathered"] = (seq, mask, gather_features(torch.full((N, 2), float(rank))))
    if rank == 0:
        torch.save(results, path)
    cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gather_equals_single_process(tmp_path):
    path = tmp_path / "ddp.pt"
    mp.spawn(_worker, args=(str(tmp_path / "rendezvous"), str(path)), nprocs=WORLD, join=True)
    results = torch.load(path, weights_only=True)

    seq, mask, feats = results.pop("gathered")
    assert seq.shape == (2 * N, 5, 1) and mask.sum(1).tolist() == [2] * N + [5] * N
    assert torch.equal(feats[:N], torch.zeros(N, 2)) and torch.equal(feats[N:], torch.ones(N, 2))

    for name, obj in CASES.items():
        torch.manual_seed(0)
        model = SCAVModel(TINY, 6, 5, obj)
        loss, grads = _loss_and_grads(model, model, _full_batch(), obj, None)
        d_loss, d_grads = results[name]
        torch.testing.assert_close(d_loss, loss, atol=1e-5, rtol=1e-5, msg=name)
        assert set(d_grads) == set(grads), name
        for k in grads:
            torch.testing.assert_close(d_grads[k], grads[k], atol=1e-5, rtol=1e-4, msg=f"{name}: {k}")


def _train_worker(rank, port, cfg_dict):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from scav.train.loop import run

    run(TrainConfig.from_dict(cfg_dict))


@pytest.mark.slow
def test_two_process_training_loop_runs(tmp_path):
    """run(cfg) under 2 gloo processes (what torchrun does) trains and writes its outputs."""
    from cache_factory import make_learnable_cache

    cache = make_learnable_cache(tmp_path / "c.zarr", {"train": 24}, video_dim=6, audio_dim=5)
    cfg = TrainConfig(cache=str(cache), out=str(tmp_path / "run"), val_clips=4, val_every=3, steps=6, batch_size=4,
                      log_every=1, warmup_steps=1, model=TINY, objective=ObjectiveConfig())
    mp.spawn(_train_worker, args=(_free_port(), cfg.to_dict()), nprocs=WORLD, join=True)
    assert (tmp_path / "run" / "averaged.pt").is_file()
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert sum('"event": "train"' in ln for ln in lines) == 6
