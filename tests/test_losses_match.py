"""Contract every built-in match loss keeps: hook dispatch, masks, dtypes, gradients, shape errors."""

from __future__ import annotations

import re

import pytest
import torch

from distill_core.components import ComponentInfo
from distill_core.errors import ShapeMismatchError
from distill_plugins_losses import attention, hidden, relation

B, H, L, D_S, D_T = 2, 2, 4, 6, 8
MASK = [[1, 1, 1, 0], [1, 1, 1, 1]]


def randn(*shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def hidden_pair(seed, width_S=D_T, width_T=D_T):
    return randn(B, L, width_S, seed=seed), randn(B, L, width_T, seed=seed + 100)


def attention_pair(seed):
    return randn(B, H, L, L, seed=seed).softmax(-1), randn(B, H, L, L, seed=seed + 100).softmax(-1)


def two_layer_pair(seed, width_S=D_T, width_T=D_T):
    return (
        [randn(B, L, width_S, seed=seed), randn(B, L, width_S, seed=seed + 1)],
        [randn(B, L, width_T, seed=seed + 100), randn(B, L, width_T, seed=seed + 101)],
    )


#: name -> (module, make (student, teacher)), covering every declared match loss.
MATCH_LOSSES = {
    "hidden_mse": (hidden, hidden_pair),
    "cos": (hidden, hidden_pair),
    "pkd": (hidden, hidden_pair),
    "attention_mse": (attention, attention_pair),
    "attention_mse_sum": (attention, attention_pair),
    "attention_ce": (attention, attention_pair),
    "attention_ce_mean": (attention, attention_pair),
    "attention_kl": (attention, attention_pair),
    "gram": (relation, two_layer_pair),
    "fsp": (relation, two_layer_pair),
    "mmd": (relation, lambda seed: two_layer_pair(seed, D_S, D_T)),
    "nst": (relation, lambda seed: two_layer_pair(seed, D_S, D_T)),
    "relation_kl": (relation, lambda seed: hidden_pair(seed, D_S, D_T)),
}
MODULES = {"hidden": hidden, "attention": attention, "relation": relation}


def leaves(features):
    return list(features) if isinstance(features, list) else [features]


def compute(name, feature_S, feature_T, mask=None):
    module = MATCH_LOSSES[name][0]
    return module.compute_match_loss(name=name, feature_S=feature_S, feature_T=feature_T, mask=mask, params=None)


def with_grad(features):
    if isinstance(features, list):
        return [f.clone().requires_grad_(True) for f in features]
    return features.clone().requires_grad_(True)


def test_every_declared_match_loss_is_covered_here():
    infos = [info for module in MODULES.values() for info in module.declare_components()]
    declared = {name for info in infos for name in (info.name, *info.aliases)}
    assert declared == set(MATCH_LOSSES)


@pytest.mark.parametrize("module_name", MODULES)
def test_declared_components_are_computed_by_their_module(module_name):
    module = MODULES[module_name]
    for info in module.declare_components():
        assert isinstance(info, ComponentInfo) and info.kind == "match_loss"
        assert info.summary and "\n" not in info.summary
        if info.params is not None:
            assert info.params.model_config.get("extra") == "forbid"
        feature_S, feature_T = MATCH_LOSSES[info.name][1](0)
        value = module.compute_match_loss(
            name=info.name,
            feature_S=feature_S,
            feature_T=feature_T,
            mask=torch.tensor(MASK),
            params=None if info.params is None else info.params(),
        )
        assert isinstance(value, torch.Tensor) and value.ndim == 0 and torch.isfinite(value)


@pytest.mark.parametrize("module_name", MODULES)
def test_hook_returns_none_for_a_foreign_name(module_name):
    feature_S, feature_T = hidden_pair(0)
    for foreign in ("kl", "not_a_loss", "linear"):
        assert (
            MODULES[module_name].compute_match_loss(
                name=foreign, feature_S=feature_S, feature_T=feature_T, mask=None, params=None
            )
            is None
        )


@pytest.mark.parametrize("name", MATCH_LOSSES)
def test_all_zero_mask_gives_exact_zero_and_zero_grads(name):
    feature_S, feature_T = MATCH_LOSSES[name][1](1)
    feature_S = with_grad(feature_S)
    value = compute(name, feature_S, feature_T, torch.zeros(B, L, dtype=torch.bool))
    assert value.item() == 0.0
    assert value.requires_grad
    value.backward()
    for leaf in leaves(feature_S):
        assert leaf.grad is not None and torch.all(leaf.grad == 0)


@pytest.mark.parametrize("name", MATCH_LOSSES)
def test_mask_dtypes_agree(name):
    feature_S, feature_T = MATCH_LOSSES[name][1](2)
    values = [
        compute(name, feature_S, feature_T, torch.tensor(MASK, dtype=dtype))
        for dtype in (torch.bool, torch.int64, torch.float32)
    ]
    torch.testing.assert_close(values[1], values[0])
    torch.testing.assert_close(values[2], values[0])


@pytest.mark.parametrize("name", MATCH_LOSSES)
def test_gradient_reaches_student_only(name):
    feature_S, feature_T = MATCH_LOSSES[name][1](3)
    feature_S, feature_T = with_grad(feature_S), with_grad(feature_T)
    compute(name, feature_S, feature_T, torch.tensor(MASK)).backward()
    for leaf in leaves(feature_T):
        assert leaf.grad is None
    assert sum(leaf.grad.abs().sum() for leaf in leaves(feature_S)) > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", MATCH_LOSSES)
def test_low_precision_inputs_compute_in_float32(name, dtype):
    feature_S, feature_T = MATCH_LOSSES[name][1](4)

    def cast(features, to):
        return [f.to(to) for f in features] if isinstance(features, list) else features.to(to)

    low_S, low_T = cast(feature_S, dtype), cast(feature_T, dtype)
    value = compute(name, low_S, low_T, torch.tensor(MASK))
    assert value.dtype == torch.float32
    reference = compute(name, cast(low_S, torch.float32), cast(low_T, torch.float32), torch.tensor(MASK))
    torch.testing.assert_close(value, reference)


def shape_mismatch_inputs(name):
    """Student/teacher inputs whose shapes differ in a way the loss does not allow."""
    if name in ("gram", "fsp"):
        return two_layer_pair(0, D_S, D_T)  # Gram matrices would be (D_S, D_S) vs (D_T, D_T)
    if name in ("mmd", "nst"):
        layers_S, _ = two_layer_pair(0, D_S, D_T)
        return layers_S, [randn(B, L + 1, D_T, seed=1), randn(B, L + 1, D_T, seed=2)]
    if name == "relation_kl":
        return randn(B, L, D_S, seed=0), randn(B, L + 1, D_T, seed=1)
    if name in ("attention_mse_sum", "attention_ce_mean"):  # heads are reduced first: lengths must agree
        return randn(B, H, L, L, seed=0), randn(B, H + 1, L + 1, L + 1, seed=1)
    if name.startswith("attention"):
        return randn(B, H, L, L, seed=0), randn(B, H + 1, L, L, seed=1)
    return randn(B, L, D_S, seed=0), randn(B, L, D_T, seed=1)


@pytest.mark.parametrize("name", ["attention_mse_sum", "attention_ce_mean"])
def test_head_reducing_losses_accept_different_head_counts(name):
    student, teacher = randn(B, H, L, L, seed=0), randn(B, H + 2, L, L, seed=1)
    reduce = (lambda a: a.sum(1)) if name == "attention_mse_sum" else (lambda a: a.mean(1))
    assert torch.allclose(compute(name, student, teacher), compute(name, reduce(student), reduce(teacher)), atol=1e-6)


@pytest.mark.parametrize("name", MATCH_LOSSES)
def test_shape_mismatch_names_both_shapes(name):
    feature_S, feature_T = shape_mismatch_inputs(name)
    with pytest.raises(ShapeMismatchError) as excinfo:
        compute(name, feature_S, feature_T)
    message = str(excinfo.value)
    shape_S = tuple(leaves(feature_S)[0].shape)
    shape_T = tuple(leaves(feature_T)[0].shape)
    assert str(shape_S) in message and str(shape_T) in message


@pytest.mark.parametrize("name", MATCH_LOSSES)
def test_mask_that_does_not_fit_names_its_shape(name):
    feature_S, feature_T = MATCH_LOSSES[name][1](5)
    bad_mask = torch.ones(B, L + 2)
    with pytest.raises(ShapeMismatchError, match=re.escape(str(tuple(bad_mask.shape)))):
        compute(name, feature_S, feature_T, bad_mask)


def at_padding(features, value, attention_value, *, columns=False):
    """A copy of ``features`` with ``value`` at MASK's padded token (example 0, position 3).

    Attention maps get ``attention_value`` in the padded query's row, and with ``columns`` in the
    padded key's column too.
    """
    out = []
    for f in leaves(features):
        f = f.clone()
        if f.ndim == 4:
            f[0, :, 3] = attention_value
            if columns:
                f[0, :, :, 3] = attention_value
        else:
            f[0, 3] = value
        out.append(f)
    return out if isinstance(features, list) else out[0]


@pytest.mark.parametrize("name", MATCH_LOSSES)
def test_padding_does_not_change_the_value(name):
    """Garbage at a padded position (a padded query row for attention) must not move the loss."""
    feature_S, feature_T = MATCH_LOSSES[name][1](6)
    mask = torch.tensor(MASK, dtype=torch.bool)  # example 0, position 3 is padding
    reference = compute(name, feature_S, feature_T, mask)

    changed = compute(name, at_padding(feature_S, 123.0, 0.9), at_padding(feature_T, 123.0, 0.9), mask)
    torch.testing.assert_close(changed, reference)
    assert reference.item() != 0.0


def test_loss_modules_register_as_pluggy_plugins():
    """Hookimpl names and arguments must fit the specs (pluggy validates them on register)."""
    import pluggy

    from distill_core import hookspecs
    from distill_plugins_losses import kd

    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    for module in (kd, hidden, attention, relation):
        manager.register(module)
    feature_S, feature_T = hidden_pair(0)
    value = manager.hook.compute_match_loss(
        name="cos", feature_S=feature_S, feature_T=feature_T, mask=None, params=None
    )
    torch.testing.assert_close(value, hidden.cos_loss(feature_S, feature_T))
    names = [info.name for infos in manager.hook.declare_components() for info in infos]
    assert sorted(names) == sorted(set(names)) and "kl" in names and "relation_kl" in names


def test_masked_mean_selects_as_indexing_would_for_each_mask_layout():
    """A mask of the leading axes, a broadcast mask and a same-shape mask: the mean of the kept entries.

    masked_mean sums over the axes the mask does not cover before it selects; NaN and infinity in
    dropped entries must not reach the value, nor NaN its gradient through the selection.
    """
    from distill_plugins_losses._common import masked_mean, pair_mask

    generator = torch.Generator().manual_seed(0)
    keep = torch.rand(3, 5, generator=generator) > 0.4
    features = torch.randn(3, 5, 4, generator=generator)
    expected = features[keep].mean()
    torch.testing.assert_close(masked_mean(features, keep), expected)  # (B, L) over (B, L, D)
    torch.testing.assert_close(masked_mean(features, keep.unsqueeze(-1)), expected)  # (B, L, 1) broadcast
    maps = torch.randn(3, 2, 5, 5, generator=generator)
    pairs = pair_mask(keep, 4)
    assert pairs.dtype == torch.bool and pairs.shape == (3, 1, 5, 5)
    assert torch.equal(pairs[:, 0], keep[:, :, None] & keep[:, None, :])
    torch.testing.assert_close(masked_mean(maps, pairs), maps[pairs.expand_as(maps)].mean())
    values = torch.randn(3, 5, generator=generator)
    torch.testing.assert_close(masked_mean(values, keep), values[keep].mean())
    poisoned = features.masked_fill(~keep.unsqueeze(-1), float("nan"))
    poisoned[~keep, 0] = float("inf")
    torch.testing.assert_close(masked_mean(poisoned, keep), expected)
    assert masked_mean(features, torch.zeros_like(keep)).item() == 0.0


def test_kept_squared_error_mean_equals_the_selected_mean_with_the_same_gradient():
    """The fused squared error (hidden_mse, attention_mse, KD mse) against indexing and the composed ops.

    Value: the mean of (S − T)² over the kept entries. Gradient: what autograd gives for
    ``where(keep, S − T, 0).square()`` summed, over the same count, on both sides; NaN and infinity in
    dropped entries of either side reach neither.
    """
    from distill_plugins_losses._common import kept_squared_error_mean, pair_mask

    generator = torch.Generator().manual_seed(3)
    keep = torch.rand(3, 5, generator=generator) > 0.4
    cases = [
        (torch.randn(3, 5, 4, generator=generator), torch.randn(3, 5, 4, generator=generator), keep),
        (
            torch.randn(3, 2, 5, 5, generator=generator),
            torch.randn(3, 2, 5, 5, generator=generator),
            pair_mask(keep, 4),
        ),
        (torch.randn(3, 5, generator=generator), torch.randn(3, 5, generator=generator), keep),
    ]
    for student, teacher, mask in cases:
        wide = mask.reshape(mask.shape + (1,) * (student.ndim - mask.ndim)).expand_as(student)
        expected = (student - teacher)[wide].square().mean()
        reference_S, reference_T = with_grad(student), with_grad(teacher)
        composed = torch.where(wide, reference_S - reference_T, 0.0).square().sum() / wide.sum()
        composed.backward()
        poisoned_S = student.masked_fill(~wide, float("nan"))
        poisoned_T = teacher.masked_fill(~wide, float("inf"))
        fused_S, fused_T = with_grad(poisoned_S), with_grad(poisoned_T)
        value = kept_squared_error_mean(fused_S, fused_T, mask)
        torch.testing.assert_close(value, expected)
        torch.testing.assert_close(composed, expected)
        value.backward()
        torch.testing.assert_close(fused_S.grad, reference_S.grad)
        torch.testing.assert_close(fused_T.grad, reference_T.grad)
        assert torch.equal(fused_S.grad[~wide], torch.zeros(int((~wide).sum())))
    student, teacher = cases[0][0].double().requires_grad_(), cases[0][1].double()
    assert torch.autograd.gradcheck(lambda s: kept_squared_error_mean(s, teacher, keep), (student,))
    empty = with_grad(cases[0][0])
    value = kept_squared_error_mean(empty, cases[0][1], torch.zeros_like(keep))
    value.backward()
    assert value.item() == 0.0 and torch.equal(empty.grad, torch.zeros_like(empty))
    no_mask = kept_squared_error_mean(cases[0][0], cases[0][1], None)
    torch.testing.assert_close(no_mask, (cases[0][0] - cases[0][1]).square().mean())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_the_bitwise_select_equals_torch_where_bit_for_bit(dtype):
    """Kept entries keep every bit (NaN, infinity, -0.0); dropped ones become +0.0; masks broadcast."""
    from distill_plugins_losses._common import _select, zero_dropped

    generator = torch.Generator().manual_seed(5)
    values = torch.randn(3, 2, 5, 5, generator=generator).to(dtype)
    values[0, 0, 0, :4] = torch.tensor([float("nan"), float("inf"), float("-inf"), -0.0], dtype=dtype)
    for keep in (torch.rand(3, 1, 5, 5, generator=generator) > 0.3, torch.rand(3, 2, 5, 5, generator=generator) > 0.3):
        keep[0, 0, 0, :4] = torch.tensor([True, True, False, True])
        expected = torch.where(keep, values, torch.zeros((), dtype=dtype))
        integer = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[values.element_size()]
        assert torch.equal(_select(values, keep).view(integer), expected.view(integer))
        # zero_dropped selects a tensor without gradient (the teacher's) the same way
        assert torch.equal(zero_dropped(values, keep).view(integer), expected.view(integer))


#: losses on attention scores whose softmax runs over every key, the padded ones included (DESIGN §6)
SOFTMAX_OVER_ALL_KEYS = ("attention_ce", "attention_ce_mean")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("name", MATCH_LOSSES)
def test_nonfinite_teacher_padding_reaches_neither_value_nor_gradient(name, bad):
    """NaN or infinity in the teacher's padding (a padded token; for attention its row and its column).

    For the score losses whose softmax includes padded keys, only the padded query's row.

    Selecting the loss's value is not enough: backward multiplies a dropped entry's zero gradient by
    the input there (0 · inf = NaN), which would make the student's weights NaN under a finite loss.
    """
    feature_S, feature_T = MATCH_LOSSES[name][1](7)
    mask = torch.tensor(MASK, dtype=torch.bool)  # example 0, position 3 is padding
    reference = compute(name, feature_S, feature_T, mask)

    student = with_grad(feature_S)
    value = compute(name, student, at_padding(feature_T, bad, bad, columns=name not in SOFTMAX_OVER_ALL_KEYS), mask)
    torch.testing.assert_close(value, reference)
    value.backward()
    for leaf in leaves(student):
        assert torch.isfinite(leaf.grad).all(), f"{name}: non-finite gradient from the teacher's padding"
