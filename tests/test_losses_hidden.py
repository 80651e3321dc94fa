"""Hidden-state match losses (`distill_plugins_losses.hidden`) against naive loop implementations."""

from __future__ import annotations

import math

import pytest
import torch

from distill_plugins_losses import hidden

B, L, D = 3, 5, 4
MASK = [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
MASKS = {"no_mask": None, "mask": MASK, "padded_example": [[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0] * 5]}


def make_features(shape=(B, L, D), seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)


def naive_hidden_mse(S, T, mask):
    S, T = S.double().tolist(), T.double().tolist()
    total, count = 0.0, 0
    for b in range(len(S)):
        for i in range(len(S[b])):
            if mask is not None and not mask[b][i]:
                continue
            for d in range(len(S[b][i])):
                total += (S[b][i][d] - T[b][i][d]) ** 2
                count += 1
    return total / count if count else 0.0


def naive_cos(S, T, mask):
    S, T = S.double().tolist(), T.double().tolist()
    total, count = 0.0, 0
    for b in range(len(S)):
        for i in range(len(S[b])):
            if mask is not None and not mask[b][i]:
                continue
            dot = sum(s * t for s, t in zip(S[b][i], T[b][i]))
            norm_S = math.sqrt(sum(s * s for s in S[b][i]))
            norm_T = math.sqrt(sum(t * t for t in T[b][i]))
            total += 1 - dot / (norm_S * norm_T)
            count += 1
    return total / count if count else 0.0


def naive_pkd(S, T, mask):
    S, T = S.double().tolist(), T.double().tolist()
    total, count = 0.0, 0
    for b in range(len(S)):
        if mask is not None and not mask[b][0]:
            continue
        row_S = S[b][0] if isinstance(S[b][0], list) else S[b]
        row_T = T[b][0] if isinstance(T[b][0], list) else T[b]
        norm_S = math.sqrt(sum(s * s for s in row_S))
        norm_T = math.sqrt(sum(t * t for t in row_T))
        total += sum((s / norm_S - t / norm_T) ** 2 for s, t in zip(row_S, row_T))
        count += 1
    return total / count if count else 0.0


CASES = [
    (hidden.hidden_mse_loss, naive_hidden_mse),
    (hidden.cos_loss, naive_cos),
    (hidden.pkd_loss, naive_pkd),
]


@pytest.mark.parametrize("mask_name", MASKS)
@pytest.mark.parametrize("fn, naive", CASES, ids=["hidden_mse", "cos", "pkd"])
def test_value_matches_naive_loops(fn, naive, mask_name):
    feature_S, feature_T = make_features()
    mask = MASKS[mask_name]
    value = fn(feature_S, feature_T, None if mask is None else torch.tensor(mask))
    assert value.item() == pytest.approx(naive(feature_S, feature_T, mask), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("mask", [None, [[1] * L, [1] * L, [0] * L]])
def test_pkd_on_pooled_features(mask):
    feature_S, feature_T = make_features((B, D), seed=2)
    value = hidden.pkd_loss(feature_S, feature_T, None if mask is None else torch.tensor(mask))
    assert value.item() == pytest.approx(naive_pkd(feature_S, feature_T, mask), rel=1e-5)


def test_pkd_uses_only_the_first_position():
    feature_S, feature_T = make_features()
    changed = feature_S.clone()
    changed[:, 1:] += 10
    torch.testing.assert_close(hidden.pkd_loss(changed, feature_T), hidden.pkd_loss(feature_S, feature_T))


def test_identical_features_give_zero():
    feature, _ = make_features()
    for fn, _naive in CASES:
        assert fn(feature, feature.clone()).item() == pytest.approx(0.0, abs=1e-6)


def test_hook_refuses_a_list_of_layers():
    feature_S, feature_T = make_features()
    with pytest.raises(ValueError, match="single layer index"):
        hidden.compute_match_loss(
            name="hidden_mse",
            feature_S=[feature_S, feature_S],
            feature_T=feature_T,
            mask=None,
            params=None,
        )
