"""Retrieval metrics against independent computations (loops, numpy, torchmetrics, sklearn)."""

import math

import numpy as np
import pytest
import torch

from scav.sequence.metrics import count_ahead, median_rank, ranks_from_scores, summarize_ranks


def loop_ranks(scores: list[list[float]]) -> list[int]:
    """Plain double loop over pairs, the documented tie rule written out."""
    out = []
    for i, row in enumerate(scores):
        r = 1
        for j, s in enumerate(row):
            if j == i:
                continue
            if s > row[i] or (s == row[i] and j < i):
                r += 1
        out.append(r)
    return out


def loop_metrics(ranks: list[int]) -> dict:
    n = len(ranks)
    srt = sorted(r - 1 for r in ranks)
    med0 = (srt[(n - 1) // 2] + srt[n // 2]) / 2
    return {
        "R@1": 100.0 * sum(r <= 1 for r in ranks) / n,
        "R@5": 100.0 * sum(r <= 5 for r in ranks) / n,
        "R@10": 100.0 * sum(r <= 10 for r in ranks) / n,
        "MedR": math.floor(med0) + 1,
        "MeanR": sum(ranks) / n,
    }


def test_hand_worked_ties():
    s = torch.tensor(
        [
            [0.5, 0.5, 0.9],  # positive 0 tied with a later candidate: ahead only 0.9 -> 2
            [0.5, 0.5, 0.9],  # positive 1 tied with an earlier one and below 0.9 -> 3
            [0.1, 0.7, 0.7],  # positive 2 tied with earlier 0.7 -> 2
        ]
    )
    assert ranks_from_scores(s).tolist() == [2, 3, 2]


def test_small_case_with_ties_vs_loop():
    g = torch.Generator().manual_seed(0)
    # values on a coarse grid so that many ties occur
    s = torch.randint(0, 4, (13, 13), generator=g).float()
    ranks = ranks_from_scores(s)
    ref = loop_ranks(s.tolist())
    assert ranks.tolist() == ref
    got = summarize_ranks(ranks)
    want = loop_metrics(ref)
    for key, v in want.items():
        assert got[key] == pytest.approx(v), key


def test_median_even_count_takes_lower_middle():
    # 0-based ranks 0, 1 -> median 0.5 -> floor 0 -> MedR 1 (cav-mae convention)
    assert median_rank(torch.tensor([1, 2])) == 1.0
    assert median_rank(torch.tensor([1, 3, 4, 9])) == 3.0
    assert median_rank(torch.tensor([5])) == 5.0


def test_count_ahead_blocks_sum_to_full_rank():
    g = torch.Generator().manual_seed(1)
    s = torch.randint(0, 5, (7, 11), generator=g).float()
    pos = torch.tensor([0, 3, 10, 5, 5, 2, 9])
    full = ranks_from_scores(s, pos)
    pos_s = s[torch.arange(7), pos]
    total = torch.zeros(7, dtype=torch.int64)
    for a, b in [(0, 4), (4, 5), (5, 11)]:
        total += count_ahead(s[:, a:b], pos_s, torch.arange(a, b), pos)
    assert torch.equal(1 + total, full)
    # and against the loop with explicit positives
    for i in range(7):
        row = s[i].tolist()
        r = 1 + sum(1 for j, v in enumerate(row) if j != pos[i] and (v > row[pos[i]] or (v == row[pos[i]] and j < pos[i])))
        assert full[i] == r


def _larger_case():
    g = torch.Generator().manual_seed(2)
    q = 200
    s = torch.randn(q, q, generator=g) + 2.0 * torch.eye(q)  # continuous: no ties
    return q, s


def test_larger_case_vs_sklearn_and_numpy():
    from sklearn.metrics import top_k_accuracy_score

    q, s = _larger_case()
    ranks = ranks_from_scores(s)
    got = summarize_ranks(ranks)
    for k in (1, 5, 10):
        sk = top_k_accuracy_score(np.arange(q), s.numpy(), k=k, labels=np.arange(q))
        assert got[f"R@{k}"] == pytest.approx(100.0 * sk)
    # the cav-mae / open_clip style: position of i in a stable descending argsort
    order = np.argsort(-s.numpy(), axis=1, kind="stable")
    pos0 = np.array([np.where(order[i] == i)[0][0] for i in range(q)])
    assert ranks.numpy().tolist() == (pos0 + 1).tolist()
    assert got["MedR"] == np.floor(np.median(pos0)) + 1
    assert got["MeanR"] == pytest.approx(pos0.mean() + 1)


@pytest.mark.slow  # importing torchmetrics alone takes ~10 s on a busy machine
def test_larger_case_vs_torchmetrics():
    from torchmetrics.retrieval import RetrievalRecall

    q, s = _larger_case()
    got = summarize_ranks(ranks_from_scores(s))
    target = torch.eye(q, dtype=torch.bool)
    rows = torch.arange(q)[:, None].expand(q, q)
    for k in (1, 5, 10):
        tm = RetrievalRecall(top_k=k)(s.reshape(-1), target.reshape(-1), indexes=rows.reshape(-1)).item()
        assert got[f"R@{k}"] == pytest.approx(100.0 * tm)


def test_stable_argsort_agrees_with_ties():
    g = torch.Generator().manual_seed(3)
    s = torch.randint(0, 3, (40, 40), generator=g).float()
    order = np.argsort(-s.numpy(), axis=1, kind="stable")  # ties: smaller index first
    pos0 = np.array([np.where(order[i] == i)[0][0] for i in range(40)])
    assert ranks_from_scores(s).numpy().tolist() == (pos0 + 1).tolist()
