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


def naive_pairs(mask, queries=L, keys=L):
    """The (b, i, j) keep-predicate of a (B, L) token mask or a (B, Lq, Lk) pair mask (nested lists)."""
    if mask is None:
        return None
    if isinstance(mask[0][0], list):  # already a pair mask
        return lambda b, i, j: bool(mask[b][i][j])
    return lambda b, i, j: bool(mask[b][i] and mask[b][j])


def naive_attention_mse(S, T, mask):
    """DESIGN §6: no mask, entries <= -1e-3 zeroed then the mean; mask, Σ (S-T)² m_i m_j / (H Σ_b n_b²), no zeroing."""
    S, T = with_heads(S), with_heads(T)
    kept = naive_pairs(mask)
    total, count = 0.0, 0
    for b in range(len(S)):
        for h in range(len(S[b])):
            for i in range(len(S[b][h])):
                for j in range(len(S[b][h][i])):
                    s, t = S[b][h][i][j], T[b][h][i][j]
                    if kept is None:
                        s = 0.0 if s <= -1e-3 else s
                        t = 0.0 if t <= -1e-3 else t
                    elif not kept(b, i, j):
                        continue
                    total += (s - t) ** 2
                    count += 1
    return total / count if count else 0.0


def naive_row_loss(S, T, mask, inputs, kind):
    """Mean over kept (b, h, i) of Σ_j over kept keys of a cross-entropy or KL term.

    A query row is kept when any of its pairs is (for a (B, L) mask: when token i is kept).
    """
    S, T = with_heads(S), with_heads(T)
    kept = naive_pairs(mask)
    total, count = 0.0, 0
    for b in range(len(S)):
        for h in range(len(S[b])):
            for i in range(len(S[b][h])):
                keys = range(len(S[b][h][i]))
                if kept is not None and not any(kept(b, i, j) for j in keys):
                    continue
                row_S, row_T = S[b][h][i], T[b][h][i]
                if inputs == "scores":
                    p_T, q_S = naive_softmax(row_T), naive_softmax(row_S)
                    if kind == "ce" and mask is None:
                        p_T = [0.0 if t <= -1e-3 else p for p, t in zip(p_T, row_T)]
                else:
                    p_T, q_S = row_T, row_S
                row = 0.0
                for j in keys:
                    if (kept is not None and not kept(b, i, j)) or p_T[j] == 0:
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
    heads, queries, keys = x.shape[1], x.shape[2], x.shape[3]
    out = [
        [[sum(values[b][h][i][j] for h in range(heads)) for j in range(keys)] for i in range(queries)]
        for b in range(x.shape[0])
    ]
    if how == "mean":
        out = [[[v / heads for v in row] for row in example] for example in out]
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

    with pytest.raises(ShapeMismatchError, match=r"\(3, 2, 5, 4\); for cross-attention pass a \(B, Lq, Lk\) pair mask"):
        attention.attention_mse_loss(torch.zeros(3, 2, 5, 4), torch.zeros(3, 2, 5, 4), torch.ones(3, 5))


# -- the masked formula keeps negative scores; pair masks for cross-attention ---------------------------
@pytest.mark.parametrize("loss", ["attention_mse", "attention_mse_sum"])
def test_masked_mse_keeps_negative_scores_of_kept_pairs(loss):
    """Issue 14: with a mask the value is exactly Σ (S−T)² m_i m_j / (H Σ_b n_b²); kept scores ≤ −1e−3 count."""
    mask = torch.tensor(MASK)
    S, T = make_scores(4, MASK)
    assert ((S <= -1e-3) & attention.pair_mask(mask.bool(), 4)).any()  # real negative scores are kept
    fn = attention.attention_mse_loss if loss == "attention_mse" else attention.attention_mse_sum_loss
    if loss == "attention_mse_sum":
        S_sum, T_sum = S.sum(1), T.sum(1)
        pairs = attention.pair_mask(mask.bool(), 3)
        expected = ((S_sum - T_sum).square() * pairs).sum() / (mask.sum(1) ** 2).sum()
    else:
        pairs = attention.pair_mask(mask.bool(), 4)
        expected = ((S - T).square() * pairs).sum() / (H * (mask.sum(1) ** 2).sum())
    torch.testing.assert_close(fn(S, T, mask), expected)
    # shifting the student's kept entries below zero changes the loss (before the fix it was zeroed away)
    assert fn(S - 5.0, T, mask) > fn(S, T, mask)


def make_cross_attention(ndim, heads=H, seed=3):
    """Cross-attention scores (B, H, L_dec, L_enc) of a decoder over an encoder, and a pair mask."""
    generator = torch.Generator().manual_seed(seed)
    decoder_len, encoder_len = 4, 6
    shape = (B, heads, decoder_len, encoder_len) if ndim == 4 else (B, decoder_len, encoder_len)
    S = torch.randn(shape, generator=generator) * 2
    T = torch.randn(shape, generator=generator) * 2
    decoder_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    encoder_mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]])
    pairs = decoder_mask[:, :, None] * encoder_mask[:, None, :]
    return S, T, pairs


CROSS_LOSSES = {
    "attention_mse": (attention.attention_mse_loss, lambda S, T, m: naive_attention_mse(S, T, m)),
    "attention_mse_sum": (
        attention.attention_mse_sum_loss,
        lambda S, T, m: naive_attention_mse(head_reduce_naive(S, "sum"), head_reduce_naive(T, "sum"), m),
    ),
    "attention_ce": (attention.attention_ce_loss, lambda S, T, m: naive_row_loss(S, T, m, "scores", "ce")),
    "attention_ce_mean": (
        attention.attention_ce_mean_loss,
        lambda S, T, m: naive_row_loss(head_reduce_naive(S, "mean"), head_reduce_naive(T, "mean"), m, "scores", "ce"),
    ),
    "attention_kl": (
        lambda S, T, m: attention.attention_kl_loss(S, T, m, inputs="scores"),
        lambda S, T, m: naive_row_loss(S, T, m, "scores", "kl"),
    ),
}


@pytest.mark.parametrize("ndim", [3, 4])
@pytest.mark.parametrize("loss", CROSS_LOSSES)
def test_cross_attention_with_a_pair_mask_matches_naive(loss, ndim):
    S, T, pairs = make_cross_attention(ndim)
    fn, naive = CROSS_LOSSES[loss]
    for dtype in (torch.long, torch.bool, torch.float32):  # masks of any dtype
        value = fn(S, T, pairs.to(dtype))
        assert value.item() == pytest.approx(naive(S, T, pairs.tolist()), rel=1e-5, abs=1e-6), dtype


@pytest.mark.parametrize("loss", CROSS_LOSSES)
def test_a_pair_mask_built_from_a_token_mask_equals_the_token_mask(loss):
    S, T = make_scores(4, MASK)
    fn = CROSS_LOSSES[loss][0]
    mask = torch.tensor(MASK)
    torch.testing.assert_close(fn(S, T, mask[:, :, None] * mask[:, None, :]), fn(S, T, mask))


def test_pair_mask_edge_cases():
    from distill_core.errors import ShapeMismatchError

    S, T, pairs = make_cross_attention(4)
    S.requires_grad_(True)
    zero = attention.attention_ce_loss(S, T, torch.zeros_like(pairs))
    assert zero.item() == 0.0  # an all-zero pair mask gives 0, not NaN
    zero.backward()
    assert torch.equal(S.grad, torch.zeros_like(S))
    # padding cannot leak: NaN in dropped pairs does not reach the loss
    S_nan = S.detach().masked_fill(pairs[:, None] == 0, float("nan"))
    assert torch.isfinite(attention.attention_mse_loss(S_nan, T, pairs))
    with pytest.raises(ShapeMismatchError, match=r"Expected `mask` of shape \(3, 4, 6\)"):
        attention.attention_mse_loss(S, T, pairs[:, :, :5])
    with pytest.raises(ShapeMismatchError, match=r"pass a \(B, Lq, Lk\) pair mask"):
        attention.attention_mse_loss(S, T, torch.ones(3, 6))  # a token mask cannot mask cross-attention
    with pytest.raises(ShapeMismatchError, match=r"pair mask"):
        attention.attention_mse_loss(S, T, torch.ones(3, 1, 4, 6))


def test_hook_and_get_loss_accept_a_pair_mask():
    from distill_core import get_loss

    S, T, pairs = make_cross_attention(4)
    via_hook = attention.compute_match_loss(name="attention_kl", feature_S=S.softmax(-1), feature_T=T.softmax(-1),
                                            mask=pairs, params=None)
    torch.testing.assert_close(via_hook, get_loss("attention_kl")(S.softmax(-1), T.softmax(-1), pairs))
    assert get_loss("attention_mse")(S, T, pairs).item() == pytest.approx(naive_attention_mse(S, T, pairs.tolist()))
