"""Attention match losses (`distill_plugins_losses.attention`) against naive loop implementations."""

from __future__ import annotations

import math

import pytest
import torch

from distill_plugins_losses import attention

B, H, L = 3, 2, 5
MASK = [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
MASKS = {"no_mask": None, "mask": MASK, "padded_example": [[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0] * 5]}
TINY = torch.finfo(torch.float32).tiny


def make_scores(ndim, mask=None, seed=0):
    """Random attention scores; keys padded in ``mask`` get -10000 as BERT adds to them."""
    generator = torch.Generator().manual_seed(seed)
    shape = (B, H, L, L) if ndim == 4 else (B, L, L)
    scores_S = torch.randn(shape, generator=generator) * 2
    scores_T = torch.randn(shape, generator=generator) * 2
    if mask is not None:
        padded_keys = ~torch.tensor(mask, dtype=torch.bool)
        padded_keys = padded_keys[:, None, None, :] if ndim == 4 else padded_keys[:, None, :]
        scores_S = scores_S.masked_fill(padded_keys, -10000.0)
        scores_T = scores_T.masked_fill(padded_keys, -10000.0)
    return scores_S, scores_T


def with_heads(attention_map):
    """Nested float64 lists (B, H, L, L); a 3-D map gets one head."""
    values = attention_map.double().tolist()
    return values if attention_map.ndim == 4 else [[example] for example in values]


def naive_softmax(row):
    top = max(row)
    exps = [math.exp(x - top) for x in row]
    return [e / sum(exps) for e in exps]


def naive_attention_mse(S, T, mask):
    S, T = with_heads(S), with_heads(T)
    total, count = 0.0, 0
    for b in range(len(S)):
        for h in range(len(S[b])):
            for i in range(L):
                for j in range(L):
                    if mask is not None and not (mask[b][i] and mask[b][j]):
                        continue
                    s = 0.0 if S[b][h][i][j] <= -1e-3 else S[b][h][i][j]
                    t = 0.0 if T[b][h][i][j] <= -1e-3 else T[b][h][i][j]
                    total += (s - t) ** 2
                    count += 1
    return total / count if count else 0.0


def naive_row_loss(S, T, mask, inputs, kind):
    """Mean over kept (b, h, i) of Σ_j over kept keys of a cross-entropy or KL term."""
    S, T = with_heads(S), with_heads(T)
    total, count = 0.0, 0
    for b in range(len(S)):
        for h in range(len(S[b])):
            for i in range(L):
                if mask is not None and not mask[b][i]:
                    continue
                row_S, row_T = S[b][h][i], T[b][h][i]
                if inputs == "scores":
                    p_T, q_S = naive_softmax(row_T), naive_softmax(row_S)
                    if kind == "ce" and mask is None:
                        p_T = [0.0 if t <= -1e-3 else p for p, t in zip(p_T, row_T)]
                else:
                    p_T, q_S = row_T, row_S
                row = 0.0
                for j in range(L):
                    if (mask is not None and not mask[b][j]) or p_T[j] == 0:
                        continue
                    log_q = math.log(max(q_S[j], TINY))
                    if kind == "ce":
                        row -= p_T[j] * log_q
                    else:
                        row += p_T[j] * (math.log(p_T[j]) - log_q)
                total += row
                count += 1
    return total / count if count else 0.0


def sum_heads(x):
    return x.sum(1) if x.ndim == 4 else x


def mean_heads(x):
    return x.mean(1) if x.ndim == 4 else x


def head_reduce_naive(x, how):
    """Reduce heads with explicit loops (for the naive references of the *_sum / *_mean losses)."""
    if x.ndim == 3:
        return x
    values = x.double().tolist()
    out = [[[sum(values[b][h][i][j] for h in range(H)) for j in range(L)] for i in range(L)] for b in range(B)]
    if how == "mean":
        out = [[[v / H for v in row] for row in example] for example in out]
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("mask_name", MASKS)
@pytest.mark.parametrize("ndim", [3, 4])
def test_attention_mse_matches_naive(ndim, mask_name):
    mask = MASKS[mask_name]
    S, T = make_scores(ndim, mask)
    value = attention.attention_mse_loss(S, T, None if mask is None else torch.tensor(mask))
    assert value.item() == pytest.approx(naive_attention_mse(S, T, mask), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("mask_name", MASKS)
@pytest.mark.parametrize("ndim", [3, 4])
def test_attention_mse_sum_matches_naive(ndim, mask_name):
    mask = MASKS[mask_name]
    S, T = make_scores(ndim, mask)
    value = attention.attention_mse_sum_loss(S, T, None if mask is None else torch.tensor(mask))
    expected = naive_attention_mse(head_reduce_naive(S, "sum"), head_reduce_naive(T, "sum"), mask)
    assert value.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def probs_from(scores):
    return scores.softmax(-1)


@pytest.mark.parametrize("inputs", ["scores", "probs"])
@pytest.mark.parametrize("mask_name", MASKS)
@pytest.mark.parametrize("ndim", [3, 4])
@pytest.mark.parametrize("kind", ["ce", "ce_mean", "kl"])
def test_attention_ce_and_kl_match_naive(kind, ndim, mask_name, inputs):
    mask = MASKS[mask_name]
    S, T = make_scores(ndim, mask, seed=1)
    if inputs == "probs":
        S, T = probs_from(S), probs_from(T)
    mask_tensor = None if mask is None else torch.tensor(mask)
    if kind == "ce":
        value = attention.attention_ce_loss(S, T, mask_tensor, inputs=inputs)
        expected = naive_row_loss(S, T, mask, inputs, "ce")
    elif kind == "ce_mean":
        value = attention.attention_ce_mean_loss(S, T, mask_tensor, inputs=inputs)
        expected = naive_row_loss(head_reduce_naive(S, "mean"), head_reduce_naive(T, "mean"), mask, inputs, "ce")
    else:
        value = attention.attention_kl_loss(S, T, mask_tensor, inputs=inputs)
        expected = naive_row_loss(S, T, mask, inputs, "kl")
    assert value.item() == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_attention_ce_no_mask_zeroes_teacher_where_scores_are_negative():
    S, T = make_scores(4)
    T = T.abs()  # no entry <= -1e-3: the zeroing does nothing and the loss is the plain CE
    plain = -(T.softmax(-1) * S.log_softmax(-1)).sum(-1).mean()
    torch.testing.assert_close(attention.attention_ce_loss(S, T), plain)


def test_attention_kl_is_zero_for_identical_maps_and_positive_otherwise():
    S, T = make_scores(4, MASK)
    mask = torch.tensor(MASK)
    probs_T = T.softmax(-1)
    assert attention.attention_kl_loss(probs_T, probs_T.clone(), mask).abs().item() < 1e-6
    assert attention.attention_kl_loss(S.softmax(-1), probs_T, mask).item() > 0


def test_probs_with_exact_zeros_stay_finite():
    S, T = make_scores(4, MASK)
    probs_S, probs_T = S.softmax(-1), T.softmax(-1)
    probs_T[..., 0] = 0.0
    probs_S[..., 1] = 0.0
    probs_S.requires_grad_(True)
    for fn in (attention.attention_ce_loss, attention.attention_kl_loss):
        value = fn(probs_S, probs_T, None, inputs="probs")
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(probs_S.grad).all()


def test_hook_uses_params_and_defaults():
    S, T = make_scores(4, MASK)
    probs_S, probs_T = S.softmax(-1), T.softmax(-1)
    mask = torch.tensor(MASK)
    via_hook = attention.compute_match_loss(
        name="attention_ce",
        feature_S=probs_S,
        feature_T=probs_T,
        mask=mask,
        params=attention.AttentionCEParams(inputs="probs"),
    )
    torch.testing.assert_close(via_hook, attention.attention_ce_loss(probs_S, probs_T, mask, inputs="probs"))
    default_kl = attention.compute_match_loss(
        name="attention_kl", feature_S=probs_S, feature_T=probs_T, mask=mask, params=None
    )
    torch.testing.assert_close(default_kl, attention.attention_kl_loss(probs_S, probs_T, mask))


def test_params_models_forbid_unknown_options():
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        attention.AttentionCEParams(input="probs")
    with pytest.raises(ValidationError):
        attention.AttentionKLParams(inputs="logits")


def test_mask_needs_square_maps():
    from distill_core.errors import ShapeMismatchError

    with pytest.raises(ShapeMismatchError, match=r"\(3, 2, 5, 4\)"):
        attention.attention_mse_loss(torch.zeros(3, 2, 5, 4), torch.zeros(3, 2, 5, 4), torch.ones(3, 5))
