"""Token-level KD divergences (`distill_plugins_losses.divergence`, and `kl`) against naive formulas."""

from __future__ import annotations

import math
import re

import pytest
import torch

from distill_core import get_loss, list_components
from distill_core.errors import ShapeMismatchError
from distill_plugins_losses import divergence, kd

B, L, V = 3, 5, 11
# labels == -100 (prompt positions, the causal shift) and padding both drop positions
LABELS = [[-100, 4, 7, 2, -100], [-100, -100, 1, 1, 9], [3, 8, -100, -100, -100]]
ATTENTION = [[1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
MASK = (torch.tensor(LABELS) != -100) & torch.tensor(ATTENTION).bool()


# --- naive references: Python floats (float64), explicit loops over rows and classes ---------------


def naive_softmax(row: list[float]) -> list[float]:
    top = max(row)
    exps = [math.exp(x - top) for x in row]
    total = sum(exps)
    return [e / total for e in exps]


def naive_kl(p: list[float], q: list[float]) -> float:
    return sum(p[c] * (math.log(p[c]) - math.log(q[c])) for c in range(len(p)) if p[c] > 0)


def naive_mix(p: list[float], q: list[float], weight_p: float) -> list[float]:
    return [weight_p * p[c] + (1 - weight_p) * q[c] for c in range(len(p))]


def naive_row(name: str, p_S: list[float], p_T: list[float], params: dict[str, float]) -> float:
    if name == "kl":
        return naive_kl(p_T, p_S)
    if name == "reverse_kl":
        return naive_kl(p_S, p_T)
    if name == "jsd":
        beta = params.get("beta", 0.5)
        if beta == 0:
            return naive_kl(p_T, p_S)
        if beta == 1:
            return naive_kl(p_S, p_T)
        m = naive_mix(p_T, p_S, beta)
        return beta * naive_kl(p_T, m) + (1 - beta) * naive_kl(p_S, m)
    if name == "tvd":
        return 0.5 * sum(abs(p_T[c] - p_S[c]) for c in range(len(p_T)))
    alpha = params.get("alpha", 0.1)
    if name == "skew_kl":
        return naive_kl(p_T, naive_mix(p_T, p_S, alpha))
    if name == "skew_reverse_kl":
        return naive_kl(p_S, naive_mix(p_S, p_T, alpha))
    raise AssertionError(name)


def temperature_of(temperature, b: int, i: int | None) -> float:
    if not isinstance(temperature, torch.Tensor):
        return float(temperature)
    if temperature.ndim == 0:
        return float(temperature)
    if temperature.ndim == 1:
        return float(temperature[b])
    return float(temperature[b, i])


def naive_divergence(name, logits_S, logits_T, temperature, mask, params) -> float:
    """T²-scaled divergence averaged over the kept rows, one row at a time."""
    student, teacher = logits_S.double().tolist(), logits_T.double().tolist()
    total, count = 0.0, 0
    for b in range(len(student)):
        positions = [None] if logits_S.ndim == 2 else range(len(student[b]))
        for i in positions:
            if mask is not None and not (mask[b] if i is None else mask[b][i]):
                continue
            row_S = student[b] if i is None else student[b][i]
            row_T = teacher[b] if i is None else teacher[b][i]
            t = temperature_of(temperature, b, i)
            p_S = naive_softmax([x / t for x in row_S])
            p_T = naive_softmax([x / t for x in row_T])
            total += t * t * naive_row(name, p_S, p_T, params)
            count += 1
    return total / count if count else 0.0


def make_logits(shape, seed=0, scale=2.0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator) * scale, torch.randn(shape, generator=generator) * scale


FUNCTIONS = {
    "kl": kd.kd_kl_loss,
    "reverse_kl": divergence.reverse_kl_loss,
    "jsd": divergence.jsd_loss,
    "tvd": divergence.tvd_loss,
    "skew_kl": divergence.skew_kl_loss,
    "skew_reverse_kl": divergence.skew_reverse_kl_loss,
}
NEW = ["reverse_kl", "jsd", "tvd", "skew_kl", "skew_reverse_kl"]

VARIANTS = [
    ("kl", {}),
    ("reverse_kl", {}),
    ("jsd", {"beta": 0.0}),
    ("jsd", {"beta": 0.3}),
    ("jsd", {"beta": 0.5}),
    ("jsd", {"beta": 0.9}),
    ("jsd", {"beta": 1.0}),
    ("tvd", {}),
    ("skew_kl", {"alpha": 0.0}),
    ("skew_kl", {"alpha": 0.1}),
    ("skew_kl", {"alpha": 0.6}),
    ("skew_reverse_kl", {"alpha": 0.0}),
    ("skew_reverse_kl", {"alpha": 0.1}),
    ("skew_reverse_kl", {"alpha": 0.6}),
]

PER_EXAMPLE_T = torch.tensor([0.5, 2.0, 4.0])
PER_POSITION_T = torch.linspace(0.5, 3.0, B * L).reshape(B, L)

CASES = {
    "2d": ((B, V), None, 1.0),
    "2d_float_T": ((B, V), None, 2.5),
    "2d_per_example_T": ((B, V), None, PER_EXAMPLE_T),
    "2d_row_mask": ((B, V), torch.tensor([1, 0, 1]), 2.0),
    "3d_mask": ((B, L, V), MASK, 1.0),
    "3d_mask_float_T": ((B, L, V), MASK, 2.0),
    "3d_mask_per_example_T": ((B, L, V), MASK, PER_EXAMPLE_T),
    "3d_mask_per_position_T": ((B, L, V), MASK, PER_POSITION_T),
    "3d_no_mask_per_position_T": ((B, L, V), None, PER_POSITION_T),
    "3d_mask_scalar_tensor_T": ((B, L, V), MASK, torch.tensor(3.0)),
}


def variant_id(variant):
    name, params = variant
    return name + "".join(f"-{k}={v}" for k, v in params.items())


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_value_matches_naive_formula(variant, case):
    name, params = variant
    shape, mask, temperature = CASES[case]
    logits_S, logits_T = make_logits(shape)
    value = FUNCTIONS[name](logits_S, logits_T, mask, temperature=temperature, **params)
    expected = naive_divergence(name, logits_S, logits_T, temperature, None if mask is None else mask.tolist(), params)
    assert value.dtype == torch.float32 and value.ndim == 0
    assert value.double().item() == pytest.approx(expected, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_registry_hook_equals_function(variant):
    name, params = variant
    logits_S, logits_T = make_logits((B, L, V), seed=1)
    via_registry = get_loss(name, **params)(logits_S, logits_T, MASK, temperature=PER_POSITION_T)
    direct = FUNCTIONS[name](logits_S, logits_T, MASK, temperature=PER_POSITION_T, **params)
    torch.testing.assert_close(via_registry, direct, rtol=0, atol=0)


def test_jsd_through_registry_with_beta_matches_naive():
    logits_S, logits_T = make_logits((B, L, V), seed=2)
    value = get_loss("jsd", beta=0.3)(logits_S, logits_T, MASK, temperature=2.0)
    expected = naive_divergence("jsd", logits_S, logits_T, 2.0, MASK.tolist(), {"beta": 0.3})
    assert value.item() == pytest.approx(expected, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 3.0, PER_POSITION_T])
def test_jsd_endpoints_are_exactly_the_kls_with_their_gradients(temperature):
    logits_S, logits_T = make_logits((B, L, V), seed=3)
    pairs = [
        (lambda s: divergence.jsd_loss(s, logits_T, MASK, temperature=temperature, beta=0.0), "kl"),
        (lambda s: divergence.jsd_loss(s, logits_T, MASK, temperature=temperature, beta=1.0), "reverse_kl"),
    ]
    for jsd_at_end, other in pairs:
        student_a = logits_S.clone().requires_grad_(True)
        student_b = logits_S.clone().requires_grad_(True)
        value = jsd_at_end(student_a)
        reference = FUNCTIONS[other](student_b, logits_T, MASK, temperature=temperature)
        assert value.item() > 0.1  # never a silent 0 at the ends
        assert torch.equal(value, reference)
        value.backward()
        reference.backward()
        assert torch.equal(student_a.grad, student_b.grad)


def test_jsd_interior_tends_to_kls_once_divided_by_beta():
    # the documented limits: JSD_β / β → KL(p_T ‖ p_S) as β → 0, JSD_β / (1 − β) → KL(p_S ‖ p_T) as β → 1
    logits_S, logits_T = make_logits((B, V), seed=4)
    logits_S, logits_T = logits_S.double(), logits_T.double()
    small = 1e-6
    forward = kd.kd_kl_loss(logits_S, logits_T).item()
    reverse = divergence.reverse_kl_loss(logits_S, logits_T).item()
    assert divergence.jsd_loss(logits_S, logits_T, beta=small).item() / small == pytest.approx(forward, rel=1e-4)
    assert divergence.jsd_loss(logits_S, logits_T, beta=1 - small).item() / small == pytest.approx(reverse, rel=1e-4)


def test_jsd_half_is_the_symmetric_jsd():
    logits_S, logits_T = make_logits((B, L, V), seed=5)
    t = 2.0
    value = divergence.jsd_loss(logits_S, logits_T, MASK, temperature=t, beta=0.5)
    p_S = (logits_S.double() / t).softmax(-1)[MASK]
    p_T = (logits_T.double() / t).softmax(-1)[MASK]
    m = (p_S + p_T) / 2
    symmetric = 0.5 * (p_T * (p_T / m).log()).sum(-1) + 0.5 * (p_S * (p_S / m).log()).sum(-1)
    assert value.item() == pytest.approx(t * t * symmetric.mean().item(), rel=1e-5)
    swapped = divergence.jsd_loss(logits_T, logits_S, MASK, temperature=t, beta=0.5)
    torch.testing.assert_close(value, swapped)
    assert value.item() <= t * t * math.log(2)


def test_skew_with_alpha_zero_is_the_plain_kl():
    logits_S, logits_T = make_logits((B, L, V), seed=6)
    torch.testing.assert_close(
        divergence.skew_kl_loss(logits_S, logits_T, MASK, temperature=2.0, alpha=0.0),
        kd.kd_kl_loss(logits_S, logits_T, MASK, temperature=2.0),
    )
    torch.testing.assert_close(
        divergence.skew_reverse_kl_loss(logits_S, logits_T, MASK, temperature=2.0, alpha=0.0),
        divergence.reverse_kl_loss(logits_S, logits_T, MASK, temperature=2.0),
    )


def test_tvd_of_disjoint_distributions_is_t_squared():
    logits_S = torch.tensor([[50.0, -50.0]])
    logits_T = torch.tensor([[-50.0, 50.0]])
    assert divergence.tvd_loss(logits_S, logits_T).item() == pytest.approx(1.0)
    assert divergence.tvd_loss(logits_S, logits_T, temperature=2.0).item() == pytest.approx(4.0)


@pytest.mark.parametrize("name", list(FUNCTIONS))
@pytest.mark.parametrize("kind", ["random", "near_equal", "equal"])
def test_rows_are_never_negative_for_bfloat16_inputs(name, kind):
    generator = torch.Generator().manual_seed(7)
    logits_S = torch.randn(16, 257, generator=generator) * 3
    if kind == "random":
        logits_T = torch.randn(16, 257, generator=generator) * 3
    elif kind == "near_equal":
        logits_T = logits_S + torch.randn(16, 257, generator=generator) * 1e-2
    else:
        logits_T = logits_S.clone()
    for row in range(16):  # each row on its own: the mean of rows could hide one negative row
        value = FUNCTIONS[name](logits_S[row : row + 1].bfloat16(), logits_T[row : row + 1].bfloat16())
        assert value.dtype == torch.float32
        assert value.item() >= 0.0, (name, kind, row, value.item())
        if kind == "equal":
            assert value.item() < 1e-6


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", NEW)
def test_low_precision_inputs_compute_in_float32(name, dtype):
    logits_S, logits_T = make_logits((B, L, V), seed=8)
    low_S, low_T = logits_S.to(dtype), logits_T.to(dtype)
    value = FUNCTIONS[name](low_S, low_T, MASK, temperature=PER_POSITION_T.to(dtype))
    reference = FUNCTIONS[name](low_S.float(), low_T.float(), MASK, temperature=PER_POSITION_T.to(dtype).float())
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, reference)


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_all_zero_mask_gives_zero_and_zero_gradients(name):
    logits_S, logits_T = make_logits((B, L, V))
    logits_S.requires_grad_(True)
    value = FUNCTIONS[name](logits_S, logits_T, torch.zeros(B, L), temperature=PER_POSITION_T)
    assert value.item() == 0.0
    value.backward()
    assert torch.isfinite(logits_S.grad).all() and torch.all(logits_S.grad == 0)


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_padding_with_nan_does_not_leak_into_the_value(name):
    logits_S, logits_T = make_logits((B, L, V))
    logits_S[~MASK] = float("nan")
    value = FUNCTIONS[name](logits_S, logits_T, MASK, temperature=2.0)
    expected = FUNCTIONS[name](logits_S[MASK], logits_T[MASK], temperature=2.0)
    assert torch.isfinite(value)
    torch.testing.assert_close(value, expected)


ALL_KD = {**FUNCTIONS, "ce": kd.kd_ce_loss, "mse": kd.kd_mse_loss, "bce": kd.kd_bce_loss}


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("name", list(ALL_KD))
def test_nonfinite_teacher_padding_reaches_neither_value_nor_gradient(name, bad):
    """A NaN or infinite teacher row at a dropped position (padding, a teacher cache's empty row).

    The value alone is not enough: backward multiplies the dropped rows' zero gradient by the teacher
    there (p · log q, (S − T)²), and 0 · NaN would make the student NaN under a finite loss.
    """
    logits_S, logits_T = make_logits((B, L, V), seed=4)
    reference = ALL_KD[name](logits_S, logits_T, MASK, temperature=2.0)
    poisoned = logits_T.clone()
    poisoned[~MASK] = bad
    student = logits_S.clone().requires_grad_(True)
    value = ALL_KD[name](student, poisoned, MASK, temperature=2.0)
    torch.testing.assert_close(value, reference)
    value.backward()
    assert torch.isfinite(student.grad).all() and torch.all(student.grad[~MASK] == 0)


@pytest.mark.parametrize("name", list(ALL_KD))
def test_a_nan_teacher_at_a_kept_position_is_a_nan_loss(name):
    """A broken target must show in the loss at its own step (the non-finite check reads the loss)."""
    logits_S, logits_T = make_logits((B, L, V), seed=5)
    logits_T[0, 1, 3] = float("nan")  # a kept position (MASK[0, 1] is True)
    assert bool(MASK[0, 1])
    assert torch.isnan(ALL_KD[name](logits_S, logits_T, MASK, temperature=2.0))


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_gradient_reaches_the_student_only_and_matches_float64(name):
    logits_S, logits_T = make_logits((B, L, V), seed=9)
    student = logits_S.clone().requires_grad_(True)
    teacher = logits_T.clone().requires_grad_(True)
    FUNCTIONS[name](student, teacher, MASK, temperature=PER_POSITION_T).backward()
    assert teacher.grad is None
    assert student.grad.abs().sum() > 0
    assert torch.all(student.grad[~MASK] == 0)
    student64 = logits_S.double().requires_grad_(True)
    FUNCTIONS[name](student64, logits_T.double(), MASK, temperature=PER_POSITION_T.double()).backward()
    torch.testing.assert_close(student.grad.double(), student64.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", NEW)
def test_shape_mismatch_names_both_shapes(name):
    with pytest.raises(ShapeMismatchError) as excinfo:
        FUNCTIONS[name](torch.zeros(2, 4, 5), torch.zeros(2, 4, 6))
    assert "(2, 4, 5)" in str(excinfo.value) and "(2, 4, 6)" in str(excinfo.value)


@pytest.mark.parametrize("bad_mask", [torch.ones(B, V), torch.ones(B), torch.ones(B, L, 1)])
def test_mask_that_does_not_fit_names_its_shape(bad_mask):
    logits_S, logits_T = make_logits((B, L, V))
    with pytest.raises(ShapeMismatchError, match=re.escape(str(tuple(bad_mask.shape)))):
        divergence.jsd_loss(logits_S, logits_T, bad_mask)


@pytest.mark.parametrize("name", list(FUNCTIONS))
@pytest.mark.parametrize("bad", [float("inf"), float("nan"), 0.0, -1.0])
def test_non_finite_or_non_positive_temperature_is_refused(name, bad):
    logits_S, logits_T = make_logits((B, V))
    with pytest.raises(ValueError, match=f"`temperature` to be a positive finite number but got {bad}"):
        FUNCTIONS[name](logits_S, logits_T, temperature=bad)


def test_temperature_error_reads_like_the_house_style():
    logits_S, logits_T = make_logits((B, V))
    with pytest.raises(ValueError) as excinfo:
        get_loss("jsd", beta=0.3)(logits_S, logits_T, temperature=float("inf"))
    assert str(excinfo.value) == "Expected argument `temperature` to be a positive finite number but got inf"


@pytest.mark.parametrize(
    "shape, temperature, names",
    [
        ((B, V), torch.ones(B, L), ["(3,)", "(3, 5)"]),  # (B, L) temperature needs (B, L, V) logits
        ((B, L, V), torch.ones(B, L + 1), ["(3, 5)", "(3, 6)"]),
        ((B, L, V), torch.ones(B + 1), ["(3,)", "(4,)"]),
    ],
)
def test_temperature_of_a_wrong_shape_names_the_shapes(shape, temperature, names):
    logits_S, logits_T = make_logits(shape)
    with pytest.raises(ShapeMismatchError) as excinfo:
        divergence.tvd_loss(logits_S, logits_T, temperature=temperature)
    assert all(name in str(excinfo.value) for name in names)


@pytest.mark.parametrize("name", ["ce", "mse", "kl", "bce", *NEW])
def test_every_kd_loss_takes_a_per_position_temperature(name):
    # a (B, L) temperature from a token-level scheduler, constant here, equals the plain number
    logits_S, logits_T = make_logits((B, L, V), seed=10)
    loss = get_loss(name)
    torch.testing.assert_close(
        loss(logits_S, logits_T, MASK, temperature=torch.full((B, L), 2.5)),
        loss(logits_S, logits_T, MASK, temperature=2.5),
    )


@pytest.mark.parametrize(
    "name, params, field",
    [
        ("jsd", {"beta": 1.5}, "beta"),
        ("jsd", {"beta": -0.1}, "beta"),
        ("jsd", {"bta": 0.3}, "bta"),
        ("skew_kl", {"alpha": 1.0}, "alpha"),
        ("skew_reverse_kl", {"alpha": -0.5}, "alpha"),
        ("skew_kl", {"beta": 0.5}, "beta"),
    ],
)
def test_bad_params_are_refused_naming_the_field(name, params, field):
    with pytest.raises(ValueError, match=f"(?s)invalid params for KD loss '{name}'.*\n{field}\n"):
        get_loss(name, **params)


def test_params_free_divergences_refuse_params():
    with pytest.raises(ValueError, match="takes no params"):
        get_loss("tvd", beta=0.5)


@pytest.mark.parametrize(
    "function, kwargs, message",
    [
        (divergence.jsd_loss, {"beta": 1.5}, r"`beta` to be in \[0, 1\] but got 1.5"),
        (divergence.skew_kl_loss, {"alpha": 1.0}, r"`alpha` to be in \[0, 1\) but got 1.0"),
        (divergence.skew_reverse_kl_loss, {"alpha": float("nan")}, r"`alpha` to be in \[0, 1\) but got nan"),
    ],
)
def test_functions_check_their_options_too(function, kwargs, message):
    logits_S, logits_T = make_logits((B, V))
    with pytest.raises(ValueError, match=message):
        function(logits_S, logits_T, **kwargs)


def test_registry_lists_the_divergences_with_params_and_summaries():
    components = {c.name: c for c in list_components() if c.kind == "kd_loss"}
    assert set(NEW) <= set(components)
    for name in NEW:
        component = components[name]
        assert component.plugin == "losses_divergence"
        assert component.summary and "\n" not in component.summary
    assert components["jsd"].describe()["params"]["properties"]["beta"]["maximum"] == 1.0
    assert components["skew_kl"].describe()["params"]["properties"]["alpha"]["default"] == 0.1
    assert components["tvd"].params_model is None


def test_hook_returns_none_for_foreign_name_and_uses_defaults():
    logits_S, logits_T = make_logits((B, V))
    kwargs = dict(logits_S=logits_S, logits_T=logits_T, temperature=1.0, mask=None)
    assert divergence.compute_kd_loss(name="kl", params=None, **kwargs) is None
    torch.testing.assert_close(
        divergence.compute_kd_loss(name="jsd", params=None, **kwargs), divergence.jsd_loss(logits_S, logits_T)
    )
    torch.testing.assert_close(
        divergence.compute_kd_loss(name="skew_kl", params={"alpha": 0.2}, **kwargs),
        divergence.skew_kl_loss(logits_S, logits_T, alpha=0.2),
    )


def test_round_off_guard_lifts_the_value_but_keeps_the_gradient():
    # a row that rounds to -1e-7 is still a real (tiny) divergence whose gradient teaches the student
    rows = torch.tensor([-1e-7, 0.0, 0.5], requires_grad=True)
    guarded = kd.nonnegative(rows)
    assert guarded.tolist() == [0.0, 0.0, 0.5]
    (guarded * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert rows.grad.tolist() == [1.0, 2.0, 3.0]
