"""Chunked token-level KD (`distill_core.token_kd`) against the naive path on full logits."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import weakref

import pytest
import torch
import torch.nn.functional as F
from pydantic import BaseModel

from distill_core import ComponentInfo, hookimpl
from distill_core.errors import ShapeMismatchError, UnknownComponentError
from distill_core.token_kd import (
    DEFAULT_CHUNK_ELEMENTS,
    chunked_token_kd,
    default_chunk_size,
    kd_loss_for_rows,
    teacher_logits_from_head,
)
from tests.conftest import REPO

N, D_S, D_T, V = 37, 8, 12, 23


def make_inputs(seed=0, dtype=torch.float32, bias=True):
    generator = torch.Generator().manual_seed(seed)

    def normal(*shape, std=1.0):
        return (torch.randn(*shape, generator=generator) * std).to(dtype)

    labels = torch.randint(0, V, (N,), generator=generator)
    labels[[2, 11, 30]] = -100  # the hard-label loss ignores these rows
    return {
        "hidden_S": normal(N, D_S).requires_grad_(True),
        "weight_S": normal(V, D_S, std=0.7).requires_grad_(True),
        "bias_S": normal(V, std=0.5).requires_grad_(True) if bias else None,
        "hidden_T": normal(N, D_T),
        "weight_T": normal(V, D_T, std=0.7),
        "bias_T": normal(V, std=0.5),
        "labels": labels,
        "temperature_rows": torch.linspace(0.5, 4.0, N),
    }


def student_params(inputs):
    return [t for t in (inputs["hidden_S"], inputs["weight_S"], inputs["bias_S"]) if t is not None and t.requires_grad]


def naive(kd_loss, inputs, temperature, *, labels=None, ce_weight=0.0):
    """Full logits of both models, the same loss on all rows times N; value, CE sum and gradients."""
    logits_S = F.linear(inputs["hidden_S"], inputs["weight_S"], inputs["bias_S"])
    with torch.no_grad():
        logits_T = F.linear(inputs["hidden_T"], inputs["weight_T"], inputs["bias_T"])
    kd_sum = kd_loss(logits_S, logits_T, temperature) * N
    ce_sum = None if labels is None else F.cross_entropy(logits_S.float(), labels, reduction="sum")
    total = 0.7 * kd_sum + (0.0 if ce_sum is None else ce_weight * ce_sum)
    grads = torch.autograd.grad(total, student_params(inputs))
    return kd_sum.detach(), None if ce_sum is None else ce_sum.detach(), grads


def chunked(kd_loss, inputs, temperature, chunk_size, *, labels=None, ce_weight=0.0):
    teacher_chunk = teacher_logits_from_head(inputs["hidden_T"], inputs["weight_T"], inputs["bias_T"])
    kd_sum, ce_sum = chunked_token_kd(
        kd_loss,
        inputs["hidden_S"],
        inputs["weight_S"],
        inputs["bias_S"],
        teacher_chunk,
        temperature=temperature,
        chunk_size=chunk_size,
        labels=labels,
    )
    total = 0.7 * kd_sum + (0.0 if ce_sum is None else ce_weight * ce_sum)
    grads = torch.autograd.grad(total, student_params(inputs))
    return kd_sum.detach(), None if ce_sum is None else ce_sum.detach(), grads


def assert_same(result, reference):
    (value, ce, grads), (value_ref, ce_ref, grads_ref) = result, reference
    torch.testing.assert_close(value, value_ref, rtol=1e-5, atol=1e-5)
    if ce_ref is not None:
        torch.testing.assert_close(ce, ce_ref, rtol=1e-5, atol=1e-5)
    for grad, grad_ref in zip(grads, grads_ref):
        torch.testing.assert_close(grad, grad_ref, rtol=1e-5, atol=1e-5)


class ProbMSEParams(BaseModel):
    scale: float = 1.0


class ThirdPartyProbMSE:
    """A third-party KD plugin that writes only `compute_kd_loss`: T² · mean_rows Σ (p_S − p_T)²."""

    def __init__(self):
        self.calls: list[tuple[tuple[int, ...], object]] = []
        self.seen_logits: list[weakref.ref] = []

    @hookimpl
    def declare_components(self):
        return [ComponentInfo(kind="kd_loss", name="test_prob_mse", params=ProbMSEParams, summary="probability MSE")]

    @hookimpl
    def compute_kd_loss(self, name, logits_S, logits_T, temperature, mask, params):
        if name != "test_prob_mse":
            return None
        self.calls.append((tuple(logits_S.shape), temperature))
        self.seen_logits.append(weakref.ref(logits_S))
        tau = temperature.unsqueeze(-1) if isinstance(temperature, torch.Tensor) else torch.tensor([temperature])
        p_S, p_T = (logits_S.float() / tau).softmax(-1), (logits_T.float() / tau).softmax(-1)
        rows = (p_S - p_T).square().sum(-1) * (tau * tau).squeeze(-1) * params.scale
        return rows.mean()


@pytest.fixture
def third_party(register_plugin):
    return register_plugin(ThirdPartyProbMSE(), "test_prob_mse_plugin")


CHUNK_SIZES = [1, 5, 16, 37, 64]  # 5 and 16 do not divide N = 37; 64 > N is one chunk


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
@pytest.mark.parametrize("temperature_kind", ["float", "per_row"])
@pytest.mark.parametrize("loss", [("jsd", {"beta": 0.3}), ("kl", None), ("skew_reverse_kl", {"alpha": 0.2})])
def test_chunked_equals_naive_in_value_and_gradients(loss, temperature_kind, chunk_size):
    inputs = make_inputs()
    kd_loss = kd_loss_for_rows(*loss)
    temperature = 2.0 if temperature_kind == "float" else inputs["temperature_rows"]
    assert_same(chunked(kd_loss, inputs, temperature, chunk_size), naive(kd_loss, inputs, temperature))


@pytest.mark.parametrize("chunk_size", [3, 10, 37])
@pytest.mark.parametrize("temperature_kind", ["float", "per_row"])
def test_a_third_party_plugin_gets_the_chunked_path(third_party, temperature_kind, chunk_size):
    inputs = make_inputs(seed=1)
    kd_loss = kd_loss_for_rows("test_prob_mse", {"scale": 3.0})
    temperature = 1.5 if temperature_kind == "float" else inputs["temperature_rows"]
    reference = naive(kd_loss, inputs, temperature)
    third_party.calls.clear()
    assert_same(chunked(kd_loss, inputs, temperature, chunk_size), reference)
    # called on 2-D (rows, V) chunks, never more than chunk_size rows, each row once
    shapes = [shape for shape, _ in third_party.calls]
    assert all(len(shape) == 2 and shape[1] == V and shape[0] <= chunk_size for shape in shapes)
    assert sum(shape[0] for shape in shapes) == N
    if temperature_kind == "per_row":
        received = torch.cat([t for _, t in third_party.calls])
        assert torch.equal(received, inputs["temperature_rows"])


def test_no_chunk_logits_outlive_the_forward(third_party):
    inputs = make_inputs()
    kd_loss = kd_loss_for_rows("test_prob_mse")
    kd_sum, _ = chunked_token_kd(
        kd_loss,
        inputs["hidden_S"],
        inputs["weight_S"],
        inputs["bias_S"],
        teacher_logits_from_head(inputs["hidden_T"], inputs["weight_T"]),
        chunk_size=8,
    )
    gc.collect()
    assert len(third_party.seen_logits) == 5
    assert all(ref() is None for ref in third_party.seen_logits)  # the graph keeps gradients, not logits
    kd_sum.backward()
    assert inputs["weight_S"].grad is not None


@pytest.mark.parametrize("chunk_size", [4, 37])
def test_hard_label_sum_equals_cross_entropy_on_full_logits(chunk_size):
    inputs = make_inputs(seed=2)
    kd_loss = kd_loss_for_rows("jsd")
    reference = naive(kd_loss, inputs, 2.0, labels=inputs["labels"], ce_weight=0.4)
    result = chunked(kd_loss, inputs, 2.0, chunk_size, labels=inputs["labels"], ce_weight=0.4)
    assert_same(result, reference)
    logits_S = F.linear(inputs["hidden_S"], inputs["weight_S"], inputs["bias_S"])
    expected = F.cross_entropy(logits_S, inputs["labels"], reduction="sum")
    torch.testing.assert_close(result[1], expected.detach())


def test_without_labels_the_hard_label_result_is_none():
    inputs = make_inputs()
    _, ce_sum, _ = chunked(kd_loss_for_rows("kl"), inputs, 1.0, 8)
    assert ce_sum is None


def test_frozen_head_without_bias_gives_hidden_gradients_only():
    inputs = make_inputs(bias=False)
    inputs["weight_S"].requires_grad_(False)
    kd_loss = kd_loss_for_rows("reverse_kl")
    result = chunked(kd_loss, inputs, 2.0, 6)
    reference = naive(kd_loss, inputs, 2.0)
    assert len(result[2]) == 1  # hidden only
    assert_same(result, reference)


def test_head_only_gradients_when_hidden_is_fixed():
    inputs = make_inputs()
    inputs["hidden_S"].requires_grad_(False)
    kd_loss = kd_loss_for_rows("tvd")
    assert_same(chunked(kd_loss, inputs, 1.0, 6), naive(kd_loss, inputs, 1.0))


def test_gradients_arrive_through_the_one_backward_pass():
    # DDP's reducer and gradient accumulation rely on autograd delivering each parameter's gradient
    # (post-accumulate hooks fire); nothing may be written into .grad on the side.
    inputs = make_inputs()
    weight = inputs["weight_S"]
    fired: list[torch.Tensor] = []
    weight.register_post_accumulate_grad_hook(lambda param: fired.append(param.grad.clone()))
    kd_loss = kd_loss_for_rows("jsd")
    teacher_chunk = teacher_logits_from_head(inputs["hidden_T"], inputs["weight_T"], inputs["bias_T"])
    first, _ = chunked_token_kd(kd_loss, inputs["hidden_S"], weight, inputs["bias_S"], teacher_chunk, chunk_size=5)
    second, _ = chunked_token_kd(kd_loss, inputs["hidden_S"], weight, inputs["bias_S"], teacher_chunk, chunk_size=7)
    assert weight.grad is None and not fired  # forward formed the gradients but delivered none
    (first + 2 * second).backward()
    assert len(fired) == 1
    expected = naive(kd_loss, inputs, 1.0)[2][1] * 3 / 0.7
    torch.testing.assert_close(weight.grad, expected, rtol=1e-5, atol=1e-5)


def test_backward_twice_is_a_clear_error():
    inputs = make_inputs()
    kd_sum, _ = chunked_token_kd(
        kd_loss_for_rows("kl"),
        inputs["hidden_S"],
        inputs["weight_S"],
        None,
        teacher_logits_from_head(inputs["hidden_T"], inputs["weight_T"]),
        chunk_size=8,
    )
    kd_sum.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="handed out once"):
        kd_sum.backward()


def test_without_grad_it_only_computes_the_values():
    inputs = make_inputs()
    kd_loss = kd_loss_for_rows("jsd")
    reference = naive(kd_loss, inputs, 2.0, labels=inputs["labels"])
    with torch.no_grad():
        kd_sum, ce_sum = chunked_token_kd(
            kd_loss,
            inputs["hidden_S"],
            inputs["weight_S"],
            inputs["bias_S"],
            teacher_logits_from_head(inputs["hidden_T"], inputs["weight_T"], inputs["bias_T"]),
            temperature=2.0,
            chunk_size=6,
            labels=inputs["labels"],
        )
    assert kd_sum.grad_fn is None and ce_sum.grad_fn is None
    torch.testing.assert_close(kd_sum, reference[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ce_sum, reference[1], rtol=1e-5, atol=1e-5)


def test_bfloat16_student_and_teacher():
    inputs = make_inputs(dtype=torch.bfloat16)
    kd_loss = kd_loss_for_rows("jsd")
    value, ce, grads = chunked(kd_loss, inputs, 2.0, 6, labels=inputs["labels"], ce_weight=1.0)
    value_ref, ce_ref, grads_ref = naive(kd_loss, inputs, 2.0, labels=inputs["labels"], ce_weight=1.0)
    assert value.dtype == torch.float32 and ce.dtype == torch.float32
    torch.testing.assert_close(value, value_ref, rtol=1e-4, atol=1e-4)  # same bf16 logits, float32 loss
    torch.testing.assert_close(ce, ce_ref, rtol=1e-4, atol=1e-4)
    for grad, grad_ref, param in zip(grads, grads_ref, student_params(inputs)):
        assert grad.dtype == param.dtype == torch.bfloat16
        torch.testing.assert_close(grad.float(), grad_ref.float(), rtol=2e-2, atol=2e-2)


def test_zero_rows_give_zero_and_zero_gradients():
    inputs = make_inputs()
    hidden = inputs["hidden_S"][:0]
    kd_sum, ce_sum = chunked_token_kd(
        kd_loss_for_rows("jsd"),
        hidden,
        inputs["weight_S"],
        inputs["bias_S"],
        teacher_logits_from_head(inputs["hidden_T"][:0], inputs["weight_T"]),
        labels=inputs["labels"][:0],
    )
    assert kd_sum.item() == 0.0 and ce_sum.item() == 0.0
    (kd_sum + ce_sum).backward()
    assert torch.all(inputs["weight_S"].grad == 0) and torch.all(inputs["bias_S"].grad == 0)


def test_default_chunk_size_scales_with_the_vocabulary():
    assert default_chunk_size(49_152) == 512
    assert default_chunk_size(256_000) == DEFAULT_CHUNK_ELEMENTS // 256_000
    assert default_chunk_size(10**9) == 1


def _call(inputs, **overrides):
    arguments = dict(
        kd_loss=kd_loss_for_rows("kl"),
        hidden_S=inputs["hidden_S"],
        head_weight_S=inputs["weight_S"],
        head_bias_S=inputs["bias_S"],
        teacher_chunk=teacher_logits_from_head(inputs["hidden_T"], inputs["weight_T"]),
    )
    options = {key: overrides.pop(key) for key in ("temperature", "chunk_size", "labels") if key in overrides}
    arguments.update(overrides)
    return chunked_token_kd(*arguments.values(), **options)


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        ({"teacher_chunk": lambda s, e: torch.zeros(e - s, V + 1)}, ShapeMismatchError, "(8, 23).*(8, 24)"),
        ({"hidden_S": torch.zeros(2, N, D_S)}, ShapeMismatchError, r"\(N, D_S\).*\(2, 37, 8\)"),
        ({"head_weight_S": torch.zeros(V, D_S + 1)}, ShapeMismatchError, r"D_S = 8.*\(23, 9\)"),
        ({"head_bias_S": torch.zeros(V + 1)}, ShapeMismatchError, r"\(23,\).*\(24,\)"),
        ({"temperature": torch.ones(N + 1)}, ShapeMismatchError, r"\(37,\).*\(38,\)"),
        ({"temperature": float("inf")}, ValueError, "positive finite number but got inf"),
        ({"temperature": 0}, ValueError, "positive finite number but got 0"),
        ({"chunk_size": 0}, ValueError, "`chunk_size` to be a positive integer but got 0"),
        ({"labels": torch.zeros(N, dtype=torch.long)[:-1]}, ShapeMismatchError, r"\(37,\).*\(36,\)"),
        ({"labels": torch.zeros(N)}, ShapeMismatchError, "integer class ids"),
        ({"kd_loss": lambda s, t, temp: (s - t).square().mean(-1)}, TypeError, "scalar tensor.*shape"),
    ],
)
def test_bad_inputs_are_refused_clearly(overrides, error, message):
    inputs = make_inputs()
    with pytest.raises(error, match=message):
        _call(inputs, chunk_size=overrides.pop("chunk_size", 8), **overrides)


def test_unknown_loss_name_and_bad_params_get_the_registry_errors():
    with pytest.raises(UnknownComponentError, match="did you mean 'jsd'"):
        kd_loss_for_rows("jds")
    with pytest.raises(ValueError, match="(?s)invalid params for KD loss 'jsd'.*beta"):
        kd_loss_for_rows("jsd", {"beta": 2.0})


def test_benchmark_runs_and_agrees_on_a_tiny_problem():
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "lm_kd_memory.py"),
            "--json",
            "--rows",
            "48",
            "--vocab",
            "300",
            "--hidden",
            "16",
            "--teacher-hidden",
            "24",
            "--chunk-size",
            "20",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("naive_peak_mb", "chunked_peak_mb", "peak_ratio", "naive_s", "chunked_s", "time_ratio"):
        assert key in report
    assert report["max_abs_diff"] <= 1e-5
