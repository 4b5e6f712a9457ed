"""DistanceSpec: built once from an objective, the same distance for training and retrieval."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from scav.model.objective import distance_spec, sequence_distance
from scav.sequence.distances import interp_euclidean_matrix, soft_dtw_matrix
from scav.sequence.spec import DistanceSpec
from scav.model.config import ObjectiveConfig


def batch(lengths, dim, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), max(lengths), dim, generator=g, dtype=torch.float64)
    m = torch.arange(max(lengths))[None] < torch.tensor(lengths)[:, None]
    return x * m[..., None], m


def test_distance_spec_from_objective():
    assert distance_spec(ObjectiveConfig(kind="cav", distance="soft_dtw", interp="post")) == DistanceSpec("euclidean", "video")
    assert distance_spec(ObjectiveConfig(interp="post", resample="audio")) == DistanceSpec("euclidean", "audio")
    s = distance_spec(ObjectiveConfig(distance="soft_dtw", interp="post", gamma=0.3))
    assert (s.name, s.gamma) == ("soft_dtw", 0.3)
    w = distance_spec(ObjectiveConfig(distance="wasserstein", interp="post", eps=0.2))
    assert (w.name, w.eps, w.pos_scale) == ("wasserstein", 0.2, "step_mean")
    assert distance_spec(ObjectiveConfig()) is distance_spec(ObjectiveConfig())  # built once


@pytest.mark.parametrize("resample,direction", [("video", "x2y"), ("audio", "y2x")])
def test_training_distance_is_the_spec_matrix(resample, direction):
    v, vm = batch([5, 3, 4], 6, 1)
    a, am = batch([2, 4], 6, 2)
    obj = ObjectiveConfig(interp="post", resample=resample)
    d = sequence_distance(obj, v, vm, a, am)
    torch.testing.assert_close(d, interp_euclidean_matrix(v, vm, a, am, direction))
    torch.testing.assert_close(d, distance_spec(obj).matrix(v, vm, a, am))
    obj = ObjectiveConfig(distance="soft_dtw", interp="post", gamma=0.2)
    torch.testing.assert_close(sequence_distance(obj, v, vm, a, am), soft_dtw_matrix(v, vm, a, am, gamma=0.2))


def test_spec_validates_without_changing():
    with pytest.raises(ValueError, match="name"):
        DistanceSpec("cosine")
    with pytest.raises(ValueError, match="resample"):
        DistanceSpec("euclidean", "v2a")  # the query side is not a resample side
    assert DistanceSpec("euclidean", "audio").label == "euclidean (audio resampled)"


def test_sequence_math_and_search_do_not_import_training():
    code = (
        "import sys; import scav.sequence.spec, scav.sequence.distances, scav.retrieve.search, scav.model.embed; "
        "bad = [m for m in sys.modules if m.startswith('scav.train')]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
