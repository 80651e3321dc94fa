"""Adaptor mistakes fail on the first step with a message that names the culprit."""

from __future__ import annotations

import pytest
import torch

from distill_core import AdaptorError, DistillationConfig, Distillation, ShapeMismatchError, TrainingConfig
from tests.tiny import bert_adaptor, dict_batches, tiny_bert, tiny_data

HIDDEN = {"layer_T": 4, "layer_S": 2, "feature": "hidden", "loss": "hidden_mse", "proj": ["linear", 16, 32]}


def run(tmp_path, adaptor_S=bert_adaptor, adaptor_T=bert_adaptor, **config) -> list[int]:
    """Train one epoch; return the steps the student took before the error."""
    teacher, student = tiny_bert(32, 4, 4, seed=0), tiny_bert(16, 2, 2, seed=1)
    steps: list[int] = []

    def counting_adaptor(batch, outputs):
        steps.append(1)
        return adaptor_S(batch, outputs)

    distiller = Distillation(
        TrainingConfig(output_dir=str(tmp_path / "out"), device="cpu", progress_bar=False),
        DistillationConfig(**config),
        teacher,
        student,
        adaptor_T,
        counting_adaptor,
    )
    with distiller:
        distiller.train(
            torch.optim.SGD(student.parameters(), lr=0.1),
            None,
            dict_batches(tiny_data(16), 8),
            num_epochs=1,
            output_hidden_states=True,
            output_attentions=True,
        )
    return steps


def expect_first_step(tmp_path, error, pattern, **kwargs) -> None:
    """The error comes on the first step: the teachers have seen one batch, the student at most one."""
    calls: list[int] = []
    teacher_calls: list[int] = []
    adaptor_S = kwargs.pop("adaptor_S", bert_adaptor)
    adaptor_T = kwargs.pop("adaptor_T", bert_adaptor)

    def recording(batch, outputs):
        calls.append(1)
        return adaptor_S(batch, outputs)

    def recording_T(batch, outputs):
        teacher_calls.append(1)
        return adaptor_T(batch, outputs)

    with pytest.raises(error, match=pattern):
        run(tmp_path, adaptor_S=recording, adaptor_T=recording_T, **kwargs)
    assert len(teacher_calls) == 1 and len(calls) <= 1, "the error must come on the first step"


def test_unknown_key(tmp_path) -> None:
    expect_first_step(
        tmp_path,
        AdaptorError,
        r"adaptor_S returned unknown key 'hiden'; did you mean 'hidden'\?",
        adaptor_S=lambda b, o: {**bert_adaptor(b, o), "hiden": o.hidden_states},
    )


def test_wrong_type(tmp_path) -> None:
    expect_first_step(
        tmp_path,
        AdaptorError,
        r"adaptor_T\['logits'\] must be a tensor or a list/tuple of tensors, "
        r"but item 0 is ndarray",
        adaptor_T=lambda b, o: {**bert_adaptor(b, o), "logits": o.logits.numpy()},
    )


def test_single_tensor_for_layers(tmp_path) -> None:
    expect_first_step(
        tmp_path,
        AdaptorError,
        r"adaptor_S\['hidden'\] must be a list/tuple with one tensor per layer, "
        r"got a single tensor of shape \(8, 12, 16\)",
        adaptor_S=lambda b, o: {**bert_adaptor(b, o), "hidden": o.hidden_states[-1]},
        intermediate_matches=[HIDDEN],
    )


def test_layer_index_out_of_range(tmp_path) -> None:
    expect_first_step(
        tmp_path,
        AdaptorError,
        r"intermediate_matches.0 \(hidden, layer_T=9, layer_S=2, loss 'hidden_mse'\): layer 9 is out "
        r"of range for the teacher's adaptor\['hidden'\], which has 5 layers",
        intermediate_matches=[{**HIDDEN, "layer_T": 9}],
    )


def test_logits_shapes_differ(tmp_path) -> None:
    expect_first_step(
        tmp_path,
        AdaptorError,
        r"logits 0: student shape \(8, 2\) differs from teacher \(adaptor_T\) "
        r"shape \(8, 3\)",
        adaptor_S=lambda b, o: {**bert_adaptor(b, o), "logits": o.logits[:, :2]},
    )


def test_missing_feature(tmp_path) -> None:
    expect_first_step(
        tmp_path,
        AdaptorError,
        r"intermediate_matches.0 .* needs 'hidden' from adaptor_S, but it "
        r"returned keys \['inputs_mask', 'logits'\]",
        adaptor_S=lambda b, o: {"logits": o.logits, "inputs_mask": b["attention_mask"]},
        intermediate_matches=[HIDDEN],
    )


def test_missing_losses_for_hard_labels(tmp_path) -> None:
    expect_first_step(
        tmp_path,
        AdaptorError,
        r"adaptor_S returned no 'losses', but hard-label training needs them",
        adaptor_S=lambda b, o: {"logits": o.logits},
        hard_label_weight=1.0,
    )


def test_mask_with_wrong_dimensions(tmp_path) -> None:
    expect_first_step(
        tmp_path,
        AdaptorError,
        r"adaptor_S\['inputs_mask'\] must be \(batch, length\), got shape "
        r"\(8, 12, 1\)",
        adaptor_S=lambda b, o: {**bert_adaptor(b, o), "inputs_mask": b["attention_mask"][..., None]},
    )


def test_logits_mask_must_fit_token_logits(tmp_path) -> None:
    expect_first_step(
        tmp_path,
        AdaptorError,
        r"adaptor_S\['logits_mask'\] of shape \(8, 12\) must match the first two "
        r"dimensions of 3-D logits \(B, L, C\), but logits 0 has shape \(8, 3\)",
        adaptor_S=lambda b, o: {**bert_adaptor(b, o), "logits_mask": b["attention_mask"]},
    )


def test_projection_width_mismatch(tmp_path) -> None:
    expect_first_step(
        tmp_path,
        ShapeMismatchError,
        r"intermediate_matches.0 .*: projection 'linear' expects student width dim_in=24, but the "
        r"student feature has shape \(8, 12, 16\) \(width 16\); set proj dim_in to 16",
        intermediate_matches=[{**HIDDEN, "proj": ["linear", 24, 32]}],
    )


def test_feature_shape_mismatch_names_the_match_and_both_shapes(tmp_path) -> None:
    expect_first_step(
        tmp_path,
        ShapeMismatchError,
        r"intermediate_matches.0 \(hidden, layer_T=4, layer_S=2, loss 'hidden_mse'\): .*student "
        r"\(8, 12, 16\) and teacher \(8, 12, 32\)",
        intermediate_matches=[{**HIDDEN, "proj": None}],
    )


def test_not_a_dict(tmp_path) -> None:
    expect_first_step(tmp_path, AdaptorError, r"adaptor_S must return a dict", adaptor_S=lambda b, o: o.logits)


def test_correct_adaptors_pass_every_step(tmp_path) -> None:
    assert len(run(tmp_path, intermediate_matches=[HIDDEN])) == 2


def test_a_plugin_loss_that_is_not_a_scalar_fails_on_the_first_step_naming_it(tmp_path, register_plugin) -> None:
    """Without the check, torch's backward() would fail with a message naming neither match nor plugin."""
    from distill_core import ComponentInfo, PluginError, hookimpl

    @hookimpl
    def declare_components():
        return [ComponentInfo(kind="match_loss", name="test_unreduced", summary="squared error, not reduced")]

    @hookimpl
    def compute_match_loss(name, feature_S, feature_T):
        return (feature_S - feature_T).pow(2) if name == "test_unreduced" else None

    plugin = type("Plugin", (), {})()
    plugin.declare_components, plugin.compute_match_loss = declare_components, compute_match_loss
    register_plugin(plugin, "test-unreduced")
    pattern = r"intermediate_matches\.0 .*: plugin 'test-unreduced' .*shape \(8, \d+, 32\).*scalar tensor"
    expect_first_step(tmp_path, PluginError, pattern, intermediate_matches=[{**HIDDEN, "loss": "test_unreduced"}])


def test_a_later_step_with_too_few_layers_still_names_the_match(tmp_path) -> None:
    """Layers are checked on every step, not only the first: a later bad output names the match too."""

    def fewer_layers_on_step_2(batch, outputs):
        results = bert_adaptor(batch, outputs)
        if len(steps) >= 1:
            results["hidden"] = results["hidden"][:2]  # layer 2 is gone
        steps.append(1)
        return results

    steps: list[int] = []
    with pytest.raises(AdaptorError, match=r"intermediate_matches\.0 .*layer 2 is out of range"):
        run(tmp_path, adaptor_S=fewer_layers_on_step_2, intermediate_matches=[HIDDEN])
    assert len(steps) == 2  # the first step passed; the second failed with the match named
