"""Relation match losses (`distill_plugins_losses.relation`) against naive loop implementations."""

from __future__ import annotations

import math

import pytest
import torch

from distill_plugins_losses import relation

B, L = 3, 5
MASK = [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
MASKS = {"no_mask": None, "mask": MASK, "padded_example": [[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0] * 5]}


def randn(*shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def naive_gram(X0, X1, mask):
    """G[b][p][q] = Σ_i m_i X0[b][i][p] X1[b][i][q] / n_b."""
    X0, X1 = X0.double().tolist(), X1.double().tolist()
    grams = []
    for b in range(len(X0)):
        kept = [i for i in range(L) if mask is None or mask[b][i]]
        n_b = len(kept)
        grams.append(
            [
                [(sum(X0[b][i][p] * X1[b][i][q] for i in kept) / n_b) if n_b else 0.0 for q in range(len(X1[b][0]))]
                for p in range(len(X0[b][0]))
            ]
        )
    return grams


def naive_gram_loss(layers_S, layers_T, mask):
    G_S, G_T = naive_gram(*layers_S, mask), naive_gram(*layers_T, mask)
    total, count = 0.0, 0
    for b in range(len(G_S)):
        for p in range(len(G_S[b])):
            for q in range(len(G_S[b][p])):
                total += (G_S[b][p][q] - G_T[b][p][q]) ** 2
                count += 1
    return total / count


def naive_mmd_loss(layers_S, layers_T, mask):
    def token_gram(X0, X1):
        X0, X1 = X0.double().tolist(), X1.double().tolist()
        width = len(X0[0][0])
        return [
            [[sum(X0[b][i][d] * X1[b][j][d] for d in range(width)) / width for j in range(L)] for i in range(L)]
            for b in range(len(X0))
        ]

    G_S, G_T = token_gram(*layers_S), token_gram(*layers_T)
    total, count = 0.0, 0
    for b in range(len(G_S)):
        for i in range(L):
            for j in range(L):
                if mask is not None and not (mask[b][i] and mask[b][j]):
                    continue
                total += (G_S[b][i][j] - G_T[b][i][j]) ** 2
                count += 1
    return total / count if count else 0.0


def naive_relation_kl(X_S, X_T, mask, heads):
    def relations(X):
        X = X.double().tolist()
        width = len(X[0][0]) // heads
        out = {}
        for b in range(B):
            keys = [j for j in range(L) if mask is None or mask[b][j]]
            for h in range(heads):
                for i in range(L):
                    scores = [
                        sum(X[b][i][h * width + k] * X[b][j][h * width + k] for k in range(width)) / math.sqrt(width)
                        for j in keys
                    ]
                    if scores:
                        top = max(scores)
                        exps = [math.exp(s - top) for s in scores]
                        out[b, h, i] = [e / sum(exps) for e in exps]
        return out

    R_S, R_T = relations(X_S), relations(X_T)
    total, count = 0.0, 0
    for b in range(B):
        for h in range(heads):
            for i in range(L):
                if mask is not None and not mask[b][i]:
                    continue
                p, q = R_T[b, h, i], R_S[b, h, i]
                total += sum(p[j] * (math.log(p[j]) - math.log(q[j])) for j in range(len(p)))
                count += 1
    return total / count if count else 0.0


@pytest.mark.parametrize("mask_name", MASKS)
def test_gram_matches_naive(mask_name):
    mask = MASKS[mask_name]
    layers_S = [randn(B, L, 4, seed=0), randn(B, L, 3, seed=1)]
    layers_T = [randn(B, L, 4, seed=2), randn(B, L, 3, seed=3)]
    mask_tensor = None if mask is None else torch.tensor(mask)
    value = relation.gram_loss(layers_S, layers_T, mask_tensor)
    assert value.item() == pytest.approx(naive_gram_loss(layers_S, layers_T, mask), rel=1e-5, abs=1e-6)
    fsp = relation.compute_match_loss(name="fsp", feature_S=layers_S, feature_T=layers_T, mask=mask_tensor, params=None)
    torch.testing.assert_close(fsp, value)


@pytest.mark.parametrize("mask_name", MASKS)
def test_mmd_matches_naive_with_different_widths(mask_name):
    mask = MASKS[mask_name]
    layers_S = [randn(B, L, 4, seed=0), randn(B, L, 4, seed=1)]
    layers_T = [randn(B, L, 6, seed=2), randn(B, L, 6, seed=3)]
    mask_tensor = None if mask is None else torch.tensor(mask)
    value = relation.mmd_loss(layers_S, layers_T, mask_tensor)
    assert value.item() == pytest.approx(naive_mmd_loss(layers_S, layers_T, mask), rel=1e-5, abs=1e-6)
    nst = relation.compute_match_loss(name="nst", feature_S=layers_S, feature_T=layers_T, mask=mask_tensor, params=None)
    torch.testing.assert_close(nst, value)


@pytest.mark.parametrize("heads", [1, 2])
@pytest.mark.parametrize("mask_name", MASKS)
def test_relation_kl_matches_naive(mask_name, heads):
    mask = MASKS[mask_name]
    X_S, X_T = randn(B, L, 4, seed=0), randn(B, L, 6, seed=1)
    value = relation.relation_kl_loss(X_S, X_T, None if mask is None else torch.tensor(mask), num_relation_heads=heads)
    assert value.item() == pytest.approx(naive_relation_kl(X_S, X_T, mask, heads), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("mask", [None, torch.tensor(MASK)])
def test_relation_kl_is_zero_for_identical_features_and_positive_otherwise(mask):
    X = randn(B, L, 8, seed=4)
    assert relation.relation_kl_loss(X, X.clone(), mask, num_relation_heads=2).abs().item() < 1e-6
    assert relation.relation_kl_loss(randn(B, L, 8, seed=5), X, mask, num_relation_heads=2).item() > 0


def test_relation_kl_heads_must_divide_both_widths():
    with pytest.raises(ValueError, match="teacher width 6"):
        relation.relation_kl_loss(randn(B, L, 4, seed=0), randn(B, L, 6, seed=1), num_relation_heads=4)


def test_relation_kl_hook_reads_params():
    X_S, X_T = randn(B, L, 4, seed=0), randn(B, L, 6, seed=1)
    via_hook = relation.compute_match_loss(
        name="relation_kl",
        feature_S=X_S,
        feature_T=X_T,
        mask=None,
        params=relation.RelationKLParams(num_relation_heads=2),
    )
    torch.testing.assert_close(via_hook, relation.relation_kl_loss(X_S, X_T, num_relation_heads=2))


@pytest.mark.parametrize("name", ["gram", "fsp", "mmd", "nst"])
@pytest.mark.parametrize("bad", ["tensor", "three"])
def test_two_layer_losses_need_exactly_two_layers(name, bad):
    X = randn(B, L, 4, seed=0)
    features = X if bad == "tensor" else [X, X, X]
    with pytest.raises(ValueError, match="list of two layer indices") as excinfo:
        relation.compute_match_loss(name=name, feature_S=features, feature_T=[X, X], mask=None, params=None)
    assert f"`{name}`" in str(excinfo.value)
