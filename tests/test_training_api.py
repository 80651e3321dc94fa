"""What users get wrong when calling train(), and what the loop must never drop (issue: trust)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from distill_core import AdaptorError, DistillationConfig, DistillError, TrainingConfig
from distill_core.errors import ShapeMismatchError
from distill_core import Distillation
from tests.tb_reader import read_scalars
from tests.tiny import dict_batches, tiny_bert, tiny_data


def quickstart_adaptor(batch, outputs):
    """The README's adaptor: it returns the model's loss, which is None on unlabelled batches."""
    return {
        "logits": outputs.logits,
        "hidden": outputs.hidden_states,
        "inputs_mask": batch["attention_mask"],
        "losses": [outputs.loss],
    }


def unlabelled(n: int = 16) -> list[dict[str, torch.Tensor]]:
    data = tiny_data(n)
    del data["labels"]
    return [{key: value[i : i + 8] for key, value in data.items()} for i in range(0, n, 8)]


def distiller(tmp_path, **distill) -> Distillation:
    teacher, student = tiny_bert(32, 2, 2, seed=0), tiny_bert(16, 2, 2, seed=1)
    return Distillation(
        TrainingConfig(output_dir=str(tmp_path / "out"), log_dir=str(tmp_path / "logs"), progress_bar=False),
        DistillationConfig(**distill),
        teacher,
        student,
        quickstart_adaptor,
        quickstart_adaptor,
    )


def test_the_quickstart_adaptor_works_on_unlabelled_data_when_hard_labels_are_off(tmp_path) -> None:
    run = distiller(
        tmp_path,
        hard_label_weight=0,
        intermediate_matches=[
            {"layer_T": 2, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "proj": ["linear", 16, 32]}
        ],
    )
    state = run.train(
        torch.optim.AdamW(run.student.parameters(), lr=1e-3),
        dataloader=unlabelled(),
        num_epochs=1,
        output_hidden_states=True,
    )
    assert state.global_step == 2


def test_a_none_loss_with_hard_labels_on_names_the_missing_labels(tmp_path) -> None:
    run = distiller(tmp_path, hard_label_weight=0.5)
    with pytest.raises(AdaptorError, match=r"adaptor_S\['losses'\]\[0\] is None.*no labels.*hard_label_weight=0"):
        run.train(torch.optim.AdamW(run.student.parameters(), lr=1e-3), dataloader=unlabelled(), num_epochs=1)


def test_textbrewer_positional_order_is_detected(tmp_path) -> None:
    run = distiller(tmp_path)
    loader = DataLoader(list(range(4)), batch_size=2)
    with pytest.raises(TypeError, match=r"got a DataLoader as `scheduler`.*train\(optimizer, dataloader=loader"):
        run.train(torch.optim.AdamW(run.student.parameters(), lr=1e-3), loader, 3)
    batches = dict_batches(tiny_data(16), 8)
    with pytest.raises(TypeError, match="got a list as `scheduler`"):
        run.train(torch.optim.AdamW(run.student.parameters(), lr=1e-3), batches, 1)


def test_multi_task_options_are_not_silently_accepted_by_other_distillers(tmp_path) -> None:
    run = distiller(tmp_path)
    with pytest.raises(TypeError, match="dataloaders"):
        run.train(
            torch.optim.AdamW(run.student.parameters(), lr=1e-3),
            dataloaders={"a": dict_batches(tiny_data(16), 8)},
            num_steps=1,
        )


@pytest.mark.parametrize(("steps", "logged"), [(3, [3]), (12, [10, 12])])
def test_the_last_partial_logging_interval_is_written(tmp_path, steps, logged) -> None:
    run = distiller(tmp_path)
    batches = dict_batches(tiny_data(8 * steps), 8)
    run.train(torch.optim.AdamW(run.student.parameters(), lr=1e-3), dataloader=batches, num_epochs=1)
    scalars = read_scalars(tmp_path / "logs")
    assert [step for step, _ in scalars["loss/total"]] == logged
    assert [step for step, _ in scalars["loss/kd"]] == logged


def test_a_match_never_reads_another_teachers_outputs(tmp_path) -> None:
    """A distiller that runs fewer teachers than a match reads gets an error, not the first teacher's outputs."""

    from distill_core.distillers.distillation import ComposedDistillation
    from distill_core.distillers.routing import WeightedEnsemble

    class FirstTeacherOnly(WeightedEnsemble):
        """A routing whose batches run teacher 0 only."""

        def keys_for(self, task):
            return [0]

    teachers = [tiny_bert(32, 2, 2, seed=0), tiny_bert(32, 2, 2, seed=2)]
    student = tiny_bert(16, 2, 2, seed=1)
    run = ComposedDistillation(
        TrainingConfig(output_dir=str(tmp_path / "out"), progress_bar=False),
        DistillationConfig(
            kd_loss_weight=0,
            intermediate_matches=[
                {
                    "layer_T": 2,
                    "layer_S": 1,
                    "feature": "hidden",
                    "loss": "hidden_mse",
                    "teacher": 1,
                    "proj": ["linear", 16, 32],
                }
            ],
        ),
        FirstTeacherOnly(teachers, quickstart_adaptor, quickstart_adaptor, None),
        student,
    )
    with pytest.raises(DistillError, match=r"intermediate_matches.0 .* reads teacher 1.*ran teachers \[0\]"):
        run.train(
            torch.optim.AdamW(student.parameters(), lr=1e-3),
            dataloader=dict_batches(tiny_data(16), 8),
            num_epochs=1,
            output_hidden_states=True,
        )


def test_early_stopping_flushes_the_partial_logging_interval(tmp_path) -> None:
    teacher, student = tiny_bert(32, 2, 2, seed=0), tiny_bert(16, 2, 2, seed=1)
    run = Distillation(
        TrainingConfig(
            output_dir=str(tmp_path / "out"),
            log_dir=str(tmp_path / "logs"),
            progress_bar=False,
            eval_steps=1,
            early_stopping_patience=2,
        ),
        DistillationConfig(),
        teacher,
        student,
        quickstart_adaptor,
        quickstart_adaptor,
    )
    metrics = iter([0.5, 0.4, 0.3])
    state = run.train(
        torch.optim.AdamW(student.parameters(), lr=1e-3),
        dataloader=dict_batches(tiny_data(80), 8),
        num_epochs=1,
        callback=lambda model, step: next(metrics),
    )
    assert state.stopped_early and state.global_step == 3
    assert [step for step, _ in read_scalars(tmp_path / "logs")["loss/total"]] == [3]


def test_a_one_pass_iterator_with_more_steps_than_batches_stops_with_the_fix(tmp_path) -> None:
    """A generator is spent after one pass; num_steps beyond its batches looped forever on empty epochs."""
    d = distiller(tmp_path, hard_label_weight=0.0)
    batches = unlabelled(16)  # two batches
    with pytest.raises(ValueError, match=r"no batches in epoch 2, after 2 of 5 steps: it can be iterated only once"):
        d.train(
            torch.optim.AdamW(d.student.parameters(), lr=1e-3),
            dataloader=(batch for batch in batches),
            num_steps=5,
        )


def test_an_optimizer_over_other_parameters_is_refused(tmp_path) -> None:
    """An optimizer built over another model's parameters would train nothing, silently."""
    d = distiller(tmp_path, hard_label_weight=0.0)
    with pytest.raises(DistillError, match="the optimizer holds none of the student's .* trainable parameters"):
        d.train(
            torch.optim.AdamW(tiny_bert(16, 2, 2, seed=5).parameters(), lr=1e-3),
            dataloader=unlabelled(),
            num_epochs=1,
        )
    assert not list((tmp_path / "out").glob("gs*.pkl"))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"callback": 5}, "callback must be callable as callback"),
        ({"max_grad_norm": "1"}, "max_grad_norm must be a number"),
        ({"scheduler_args": {"step_size": 1}}, "scheduler_args but no scheduler_class"),
    ],
)
def test_bad_train_arguments_are_refused_before_training(tmp_path, arguments, message) -> None:
    d = distiller(tmp_path, hard_label_weight=0.0)
    with pytest.raises(TypeError, match=message):
        d.train(torch.optim.AdamW(d.student.parameters(), lr=1e-3), dataloader=unlabelled(), num_epochs=1, **arguments)
    assert not list((tmp_path / "out").glob("gs*.pkl"))


def test_a_misspelt_projection_group_option_is_refused_with_a_suggestion(tmp_path) -> None:
    """torch keeps any key in a param group and ignores it: 'lrr' trained at the default learning rate."""
    match = {"layer_T": 2, "layer_S": 2, "feature": "hidden", "loss": "hidden_mse"}
    d = distiller(
        tmp_path,
        hard_label_weight=0.0,
        intermediate_matches=[{**match, "proj": ["linear", 16, 32, {"lrr": 1e-3, "weight_decay": 0.1}]}],
    )
    with pytest.raises(
        DistillError, match=r"intermediate_matches.0 .*'lrr' is not an option of AdamW; did you mean 'lr'\?"
    ):
        d.train(
            torch.optim.AdamW(d.student.parameters(), lr=1e-3),
            dataloader=unlabelled(),
            num_epochs=1,
            output_hidden_states=True,
        )


@pytest.mark.parametrize(
    ("proj", "hint"),
    [
        (None, 'map the student\'s to the teacher\'s with a projection, e.g. "proj": ["linear", 16, 32]'),
        (["linear", 16, 64], "projection 'linear' maps to dim_out=64, the teacher's width is 32: set dim_out to 32"),
    ],
)
def test_a_width_mismatch_of_a_match_says_how_to_project(tmp_path, proj, hint) -> None:
    match = {"layer_T": 2, "layer_S": 2, "feature": "hidden", "loss": "hidden_mse"}
    if proj is not None:
        match["proj"] = proj
    d = distiller(tmp_path, hard_label_weight=0.0, intermediate_matches=[match])
    with pytest.raises(ShapeMismatchError) as caught:
        d.train(
            torch.optim.AdamW(d.student.parameters(), lr=1e-3),
            dataloader=unlabelled(),
            num_epochs=1,
            output_hidden_states=True,
        )
    assert str(caught.value).startswith("intermediate_matches.0 (hidden, layer_T=2, layer_S=2")
    assert hint in str(caught.value)


def test_a_student_adaptor_that_detaches_everything_is_named_at_the_first_step(tmp_path) -> None:
    """backward() said only "element 0 of tensors does not require grad"."""

    def detached(batch, outputs):
        return {
            key: value.detach() if isinstance(value, torch.Tensor) else value
            for key, value in quickstart_adaptor(batch, outputs).items()
            if key != "losses"
        }

    teacher, student = tiny_bert(32, 2, 2, seed=0), tiny_bert(16, 2, 2, seed=1)
    d = Distillation(
        TrainingConfig(output_dir=str(tmp_path / "out"), progress_bar=False),
        DistillationConfig(hard_label_weight=0.0),
        teacher,
        student,
        quickstart_adaptor,
        detached,
    )
    with pytest.raises(DistillError, match=r"none of the loss terms \(kd_loss_type 'ce'\) has a gradient path"):
        d.train(torch.optim.AdamW(student.parameters(), lr=1e-3), dataloader=unlabelled(), num_epochs=1)


@pytest.mark.parametrize(
    ("resume_from", "error", "message"),
    [
        (True, TypeError, "resume_from must be 'latest' or the path"),
        ("DIR", DistillError, "is a folder; pass a checkpoint file in it"),
    ],
)
def test_a_resume_from_that_is_not_a_checkpoint_file_says_what_to_pass(tmp_path, resume_from, error, message) -> None:
    d = distiller(tmp_path, hard_label_weight=0.0)
    if resume_from == "DIR":
        resume_from = str(tmp_path)
    with pytest.raises(error, match=message):
        d.train(
            torch.optim.AdamW(d.student.parameters(), lr=1e-3),
            dataloader=unlabelled(),
            num_epochs=1,
            resume_from=resume_from,
        )


def test_gradients_are_cleared_after_every_step_and_an_optimizers_own_zero_grad_is_called(tmp_path) -> None:
    """The loop clears gradients itself for torch's optimizers; a class with its own zero_grad gets it called."""
    d = distiller(tmp_path, hard_label_weight=0.0)
    grads_before_step: list[bool] = []

    def record(batch):
        grads_before_step.append(all(p.grad is None for p in d.student.parameters()))
        return batch

    d.train(
        torch.optim.AdamW(d.student.parameters(), lr=1e-3),
        dataloader=unlabelled(24),
        num_epochs=1,
        batch_postprocessor=record,
    )
    assert grads_before_step == [True, True, True]
    assert all(p.grad is None for p in d.student.parameters())

    class Counting(torch.optim.AdamW):
        calls = 0

        def zero_grad(self, set_to_none: bool = True) -> None:
            Counting.calls += 1
            super().zero_grad(set_to_none)

    d = distiller(tmp_path / "second", hard_label_weight=0.0)
    d.train(Counting(d.student.parameters(), lr=1e-3), dataloader=unlabelled(24), num_epochs=1)
    assert Counting.calls == 3
