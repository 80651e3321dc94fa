"""KD losses (`distill_plugins_losses.kd`) against deliberately naive loop implementations."""

from __future__ import annotations

import math
import re

import pytest
import torch

from distill_core.components import ComponentInfo
from distill_core.errors import ShapeMismatchError
from distill_plugins_losses import kd

B, L, C = 3, 4, 5
MASK = [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


# --- naive references: Python floats, explicit loops ------------------------------------------


def naive_softmax(row: list[float]) -> list[float]:
    top = max(row)
    exps = [math.exp(x - top) for x in row]
    total = sum(exps)
    return [e / total for e in exps]


def naive_sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def kept_rows(logits_S, logits_T, temperature, mask):
    """Yield (student row, teacher row, temperature) for every kept row, in float64 Python lists."""
    student, teacher = logits_S.double().tolist(), logits_T.double().tolist()
    temps = (
        temperature.double().tolist() if isinstance(temperature, torch.Tensor) else [float(temperature)] * len(student)
    )
    for b in range(len(student)):
        if logits_S.ndim == 2:
            if mask is None or mask[b]:
                yield student[b], teacher[b], temps[b]
        else:
            for i in range(len(student[b])):
                if mask is None or mask[b][i]:
                    yield student[b][i], teacher[b][i], temps[b]


def naive_kd(name, logits_S, logits_T, temperature, mask):
    mask_list = None if mask is None else mask.tolist()
    total, count = 0.0, 0
    for row_S, row_T, t in kept_rows(logits_S, logits_T, temperature, mask_list):
        soft_S = [x / t for x in row_S]
        soft_T = [x / t for x in row_T]
        if name in ("ce", "kl"):
            p_T, q_S = naive_softmax(soft_T), naive_softmax(soft_S)
            row = 0.0
            for c in range(len(p_T)):
                if name == "ce":
                    row -= p_T[c] * math.log(q_S[c])
                else:
                    row += p_T[c] * (math.log(p_T[c]) - math.log(q_S[c]))
            total += row * (t * t if name == "kl" else 1.0)
            count += 1
        else:
            for c in range(len(soft_S)):
                if name == "mse":
                    total += (soft_S[c] - soft_T[c]) ** 2
                else:
                    y, s = naive_sigmoid(soft_T[c]), naive_sigmoid(soft_S[c])
                    total -= y * math.log(s) + (1 - y) * math.log(1 - s)
                count += 1
    return total / count if count else 0.0


def make_logits(shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randn(shape, generator=generator) * 2,
        torch.randn(shape, generator=generator) * 2,
    )


LOSS_FNS = {"ce": kd.kd_ce_loss, "mse": kd.kd_mse_loss, "kl": kd.kd_kl_loss, "bce": kd.kd_bce_loss}

CASES = {
    "2d": ((B, C), None, 1.0),
    "2d_T": ((B, C), None, 2.5),
    "2d_row_mask": ((B, C), torch.tensor([1, 0, 1]), 2.0),
    "2d_tensor_T": ((B, C), None, torch.tensor([1.0, 2.0, 4.0])),
    "3d": ((B, L, C), None, 3.0),
    "3d_mask": ((B, L, C), torch.tensor(MASK), 2.0),
    "3d_mask_tensor_T": ((B, L, C), torch.tensor(MASK), torch.tensor([0.5, 2.0, 8.0])),
    "3d_tensor_T": ((B, L, C), None, torch.tensor([0.5, 2.0, 8.0])),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", LOSS_FNS)
def test_value_matches_naive_loops(name, case):
    shape, mask, temperature = CASES[case]
    logits_S, logits_T = make_logits(shape)
    value = LOSS_FNS[name](logits_S, logits_T, mask, temperature=temperature)
    expected = naive_kd(name, logits_S, logits_T, temperature, mask)
    assert value.dtype == torch.float32 and value.ndim == 0
    assert value.double().item() == pytest.approx(expected, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("name", LOSS_FNS)
def test_hook_dispatches_to_functional_core(name):
    logits_S, logits_T = make_logits((B, L, C))
    mask = torch.tensor(MASK)
    via_hook = kd.compute_kd_loss(
        name=name, logits_S=logits_S, logits_T=logits_T, temperature=2.0, mask=mask, params=None
    )
    direct = LOSS_FNS[name](logits_S, logits_T, mask, temperature=2.0)
    torch.testing.assert_close(via_hook, direct)


def test_kl_is_temperature_squared_times_naive_kl():
    logits_S, logits_T = make_logits((B, C), seed=3)
    t = 4.0
    naive = 0.0
    for row_S, row_T in zip(logits_S.double().tolist(), logits_T.double().tolist()):
        p = naive_softmax([x / t for x in row_T])
        q = naive_softmax([x / t for x in row_S])
        naive += sum(p[c] * math.log(p[c] / q[c]) for c in range(C))
    naive /= B
    assert kd.kd_kl_loss(logits_S, logits_T, temperature=t).item() == pytest.approx(t * t * naive, rel=1e-5)


@pytest.mark.parametrize("shape, mask", [((B, C), None), ((B, L, C), torch.tensor(MASK))])
def test_ce_minus_kl_over_t2_is_teacher_entropy(shape, mask):
    logits_S, logits_T = make_logits(shape, seed=5)
    t = 2.0
    ce = kd.kd_ce_loss(logits_S, logits_T, mask, temperature=t)
    kl = kd.kd_kl_loss(logits_S, logits_T, mask, temperature=t)
    p_T = (logits_T.double() / t).softmax(-1)
    entropy = -(p_T * p_T.log()).sum(-1)
    if mask is not None:
        entropy = entropy[mask.bool()]
    assert (ce - kl / t**2).item() == pytest.approx(entropy.mean().item(), abs=1e-5)


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.int64, torch.float32])
def test_mask_dtypes_agree(mask_dtype):
    logits_S, logits_T = make_logits((B, L, C))
    reference = kd.kd_kl_loss(logits_S, logits_T, torch.tensor(MASK, dtype=torch.bool))
    value = kd.kd_kl_loss(logits_S, logits_T, torch.tensor(MASK).to(mask_dtype))
    torch.testing.assert_close(value, reference)


def test_masked_equals_selecting_positions_first():
    logits_S, logits_T = make_logits((B, L, C))
    mask = torch.tensor(MASK, dtype=torch.bool)
    for fn in LOSS_FNS.values():
        masked = fn(logits_S, logits_T, mask, temperature=2.0)
        selected = fn(logits_S[mask], logits_T[mask], temperature=2.0)
        torch.testing.assert_close(masked, selected)


def test_padding_with_nan_does_not_leak():
    logits_S, logits_T = make_logits((B, L, C))
    mask = torch.tensor(MASK, dtype=torch.bool)
    logits_S[~mask] = float("nan")
    for fn in LOSS_FNS.values():
        assert torch.isfinite(fn(logits_S, logits_T, mask, temperature=2.0))


@pytest.mark.parametrize("name", LOSS_FNS)
def test_all_zero_mask_gives_exact_zero_and_finite_grads(name):
    logits_S, logits_T = make_logits((B, L, C))
    logits_S.requires_grad_(True)
    value = LOSS_FNS[name](logits_S, logits_T, torch.zeros(B, L), temperature=2.0)
    assert value.item() == 0.0
    value.backward()
    assert logits_S.grad is not None and torch.all(logits_S.grad == 0)


@pytest.mark.parametrize("name", LOSS_FNS)
def test_gradient_reaches_student_only(name):
    logits_S, logits_T = make_logits((B, L, C))
    logits_S.requires_grad_(True)
    logits_T.requires_grad_(True)
    LOSS_FNS[name](logits_S, logits_T, torch.tensor(MASK), temperature=2.0).backward()
    assert logits_T.grad is None
    assert logits_S.grad is not None and logits_S.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", LOSS_FNS)
def test_low_precision_inputs_compute_in_float32(name, dtype):
    logits_S, logits_T = make_logits((B, L, C))
    value = LOSS_FNS[name](
        logits_S.to(dtype), logits_T.to(dtype), torch.tensor(MASK), temperature=torch.ones(B, dtype=dtype)
    )
    assert value.dtype == torch.float32
    reference = LOSS_FNS[name](
        logits_S.to(dtype).float(), logits_T.to(dtype).float(), torch.tensor(MASK), temperature=1.0
    )
    torch.testing.assert_close(value, reference)


@pytest.mark.parametrize("name", LOSS_FNS)
def test_shape_mismatch_names_both_shapes(name):
    with pytest.raises(ShapeMismatchError) as excinfo:
        LOSS_FNS[name](torch.zeros(2, 4, 5), torch.zeros(2, 4, 6))
    assert "(2, 4, 5)" in str(excinfo.value) and "(2, 4, 6)" in str(excinfo.value)


@pytest.mark.parametrize("bad_mask", [torch.ones(3, 5), torch.ones(3), torch.ones(3, 4, 1)])
def test_mask_that_does_not_fit_names_its_shape(bad_mask):
    logits_S, logits_T = make_logits((B, L, C))
    with pytest.raises(ShapeMismatchError, match=re.escape(str(tuple(bad_mask.shape)))):
        kd.kd_ce_loss(logits_S, logits_T, bad_mask)


def test_bad_temperatures_are_refused():
    logits_S, logits_T = make_logits((B, C))
    with pytest.raises(ValueError, match="`temperature` to be a positive finite number but got -1"):
        kd.kd_kl_loss(logits_S, logits_T, temperature=-1)
    with pytest.raises(ShapeMismatchError, match=r"\(5,\)"):
        kd.kd_kl_loss(logits_S, logits_T, temperature=torch.ones(5))


def test_scalar_tensor_temperature_equals_float():
    logits_S, logits_T = make_logits((B, L, C))
    torch.testing.assert_close(
        kd.kd_kl_loss(logits_S, logits_T, temperature=torch.tensor(3.0)),
        kd.kd_kl_loss(logits_S, logits_T, temperature=3.0),
    )


def test_hook_returns_none_for_foreign_name():
    logits_S, logits_T = make_logits((B, C))
    assert (
        kd.compute_kd_loss(
            name="hidden_mse",
            logits_S=logits_S,
            logits_T=logits_T,
            temperature=1.0,
            mask=None,
            params=None,
        )
        is None
    )


def test_declared_components_are_computed_by_the_hook():
    declared = kd.declare_components()
    assert [info.name for info in declared] == ["ce", "mse", "kl", "bce"]
    logits_S, logits_T = make_logits((B, C))
    for info in declared:
        assert isinstance(info, ComponentInfo) and info.kind == "kd_loss"
        assert info.summary and "\n" not in info.summary
        value = kd.compute_kd_loss(
            name=info.name,
            logits_S=logits_S,
            logits_T=logits_T,
            temperature=2.0,
            mask=None,
            params=None if info.params is None else info.params(),
        )
        assert isinstance(value, torch.Tensor) and value.ndim == 0
