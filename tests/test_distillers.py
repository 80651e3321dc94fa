"""The five distillers on the shared loop, with tiny random-init Hugging Face BERT models."""

from __future__ import annotations

import os

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from distill_core import (
    BasicDistillation,
    BasicMultiTeacherDistillation,
    BasicTraining,
    DistillationConfig,
    Distillation,
    DistillError,
    MultiTaskDistillation,
    MultiTeacherDistillation,
    TrainingConfig,
    get_loss,
)
from distill_core.distillers import probability_shift
from tests.tb_reader import read_scalars
from tests.tiny import bert_adaptor, dict_batches, tiny_bert, tiny_data

HIDDEN_MATCH = {
    "layer_T": 4,
    "layer_S": 2,
    "feature": "hidden",
    "loss": "hidden_mse",
    "weight": 1,
    "proj": ["linear", 16, 32, {"lr": 0.01}],
}


def train_config(tmp_path, **overrides) -> TrainingConfig:
    options = {"output_dir": str(tmp_path / "out"), "device": "cpu", "progress_bar": False, "log_steps": 1}
    return TrainingConfig(**{**options, **overrides})


def models():
    return tiny_bert(32, 4, 4, seed=0), tiny_bert(16, 2, 2, seed=1)


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def confident(model: torch.nn.Module) -> torch.nn.Module:
    """Scale a tiny BERT's classifier up: random-init logits are near 0, so every KD loss would be about
    ln(classes) whatever its target, and a check of the target would prove nothing."""
    with torch.no_grad():
        model.classifier.weight.mul_(50)
    return model


def changed(before: dict[str, torch.Tensor], model: torch.nn.Module) -> bool:
    return any(not torch.equal(before[key], value) for key, value in model.state_dict().items())


def test_basic_training_learns(tmp_path) -> None:
    model = tiny_bert(16, 2, 2)
    batches = dict_batches(tiny_data(32), 8)
    trainer = BasicTraining(train_config(tmp_path), model, bert_adaptor)
    before = snapshot(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)

    def loss_on_data() -> float:
        model.eval()
        with torch.no_grad():
            return sum(float(model(**b).loss) for b in batches) / len(batches)

    start = loss_on_data()
    with trainer:
        state = trainer.train(optimizer, None, batches, num_epochs=5)
    assert state.global_step == 20
    assert changed(before, model)
    assert loss_on_data() < start


def test_distillation_trains_student_not_teacher_with_every_feature(tmp_path) -> None:
    teacher, student = models()
    teacher_before, student_before = snapshot(teacher), snapshot(student)
    config = DistillationConfig(
        temperature=4,
        hard_label_weight=0.5,
        intermediate_matches=[
            HIDDEN_MATCH,
            {"layer_T": 3, "layer_S": 1, "feature": "attention", "loss": "attention_mse_sum", "weight": 1},
            {"layer_T": [0, 4], "layer_S": [0, 2], "feature": "hidden", "loss": "mmd", "weight": 1},
        ],
    )
    distiller = Distillation(
        train_config(tmp_path, log_dir=str(tmp_path / "logs")), config, teacher, student, bert_adaptor, bert_adaptor
    )
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    with distiller:
        distiller.train(
            optimizer,
            None,
            dict_batches(tiny_data(32), 8),
            num_epochs=2,
            output_hidden_states=True,
            output_attentions=True,
        )
    assert changed(student_before, student)
    assert not changed(teacher_before, teacher), "the teacher's weights must never change"
    assert isinstance(distiller.projections, torch.nn.ModuleList) and len(distiller.projections) == 3
    assert isinstance(distiller.projections[0], torch.nn.Linear)
    assert isinstance(distiller.projections[1], torch.nn.Identity)
    # the projection joined the optimizer as its own group, with its own options
    assert len(optimizer.param_groups) == 2 and optimizer.param_groups[1]["lr"] == 0.01
    assert any(p is distiller.projections[0].weight for p in optimizer.param_groups[1]["params"])

    tags = set(read_scalars(tmp_path / "logs"))
    for term in ("kd", "hard_label", "match0_hidden_mse", "match1_attention_mse_sum", "match2_mmd"):
        assert f"loss/{term}" in tags and f"weighted/{term}" in tags
    assert {"loss/total", "lr/group0", "lr/group1", "temperature"} <= tags
    scalars = read_scalars(tmp_path / "logs")
    hard, weighted = dict(scalars["loss/hard_label"]), dict(scalars["weighted/hard_label"])
    assert weighted[1] == pytest.approx(hard[1] * 0.5)


def test_tuple_batches_call_model_positionally(tmp_path) -> None:
    teacher, student = models()
    data = tiny_data(16)
    loader = DataLoader(TensorDataset(data["input_ids"], data["attention_mask"]), batch_size=8)

    def adaptor(batch, outputs):
        return {"logits": outputs.logits, "hidden": outputs.hidden_states, "inputs_mask": batch[1]}

    config = DistillationConfig(intermediate_matches=[HIDDEN_MATCH])
    distiller = Distillation(train_config(tmp_path), config, teacher, student, adaptor, adaptor)
    before = snapshot(student)
    with distiller:
        state = distiller.train(
            torch.optim.SGD(student.parameters(), lr=0.1), None, loader, num_epochs=1, output_hidden_states=True
        )
    assert state.global_step == 2 and changed(before, student)


def _one_update(tmp_path, batches, accumulation) -> dict[str, torch.Tensor]:
    teacher, student = models()
    config = DistillationConfig(temperature=2, hard_label_weight=1.0, intermediate_matches=[HIDDEN_MATCH])
    distiller = Distillation(
        train_config(tmp_path, gradient_accumulation_steps=accumulation),
        config,
        teacher,
        student,
        bert_adaptor,
        bert_adaptor,
    )
    optimizer = torch.optim.SGD(student.parameters(), lr=0.5)
    with distiller:
        state = distiller.train(optimizer, None, batches, num_epochs=1, output_hidden_states=True)
    assert state.global_step == 1
    return {**snapshot(student), **{f"proj.{k}": v for k, v in snapshot(distiller.projections).items()}}


def test_gradient_accumulation_matches_one_big_batch(tmp_path) -> None:
    data = tiny_data(32, padded=False)  # equal token counts per half, so masked means agree exactly
    accumulated = _one_update(tmp_path / "a", dict_batches(data, 16), accumulation=2)
    single = _one_update(tmp_path / "b", dict_batches(data, 32), accumulation=1)
    for key in single:
        assert torch.allclose(accumulated[key], single[key], atol=1e-5), key


@pytest.mark.parametrize(
    ("frequency", "epoch_frequency", "expected"),
    [
        (1, 1, [4, 8, 12, 16]),  # the end of each epoch
        (2, 1, [2, 4, 6, 8, 10, 12, 14, 16]),  # the middle and the end of each epoch
        (1, 2, [8, 16]),  # the end of epochs 2 and 4
        (2, 2, [6, 8, 14, 16]),  # the middle and the end of epochs 2 and 4
    ],
)
def test_seed_checkpoint_cadence(tmp_path, frequency, epoch_frequency, expected) -> None:
    teacher, student = models()
    config = train_config(tmp_path, ckpt_frequency=frequency, ckpt_epoch_frequency=epoch_frequency)
    distiller = BasicDistillation(config, DistillationConfig(), teacher, student, bert_adaptor, bert_adaptor)
    steps = []
    with distiller:
        distiller.train(
            torch.optim.SGD(student.parameters(), lr=0.01),
            None,
            dict_batches(tiny_data(32), 8),
            num_epochs=4,
            callback=lambda model, step: steps.append((step, model.training)),
        )
    out = tmp_path / "out"
    assert sorted(os.listdir(out)) == sorted([f"gs{step}.pkl" for step in expected] + ["checkpoints"])
    # each full state, and the record of its step's evaluation (the callback runs at every checkpoint here)
    assert sorted(os.listdir(out / "checkpoints")) == sorted(
        [f"step-{step:08d}.pt" for step in expected] + [f"step-{step:08d}.eval.json" for step in expected]
    )
    assert steps == [(step, False) for step in expected]  # the callback sees the student in eval mode
    assert student.training  # and it is back in train mode after


def test_step_mode_checkpoints_every_ckpt_steps_and_at_the_end(tmp_path) -> None:
    teacher, student = models()
    distiller = BasicDistillation(
        train_config(tmp_path, ckpt_steps=3), DistillationConfig(), teacher, student, bert_adaptor, bert_adaptor
    )
    with distiller:
        state = distiller.train(
            torch.optim.SGD(student.parameters(), lr=0.01), None, dict_batches(tiny_data(32), 8), num_steps=7
        )
    assert state.global_step == 7 and state.epoch == 1
    assert sorted(p for p in os.listdir(tmp_path / "out") if p.endswith(".pkl")) == ["gs3.pkl", "gs6.pkl", "gs7.pkl"]
    saved = torch.load(tmp_path / "out" / "gs7.pkl", weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in student.state_dict().items())


def test_custom_matches_capture_submodules_with_a_registry_loss(tmp_path) -> None:
    teacher, student = models()
    customs = [
        {
            "module_T": "bert.encoder.layer.3.attention.self.query",
            "module_S": "bert.encoder.layer.1.attention.self.query",
            "loss": "relation_kl",
            "weight": 1,
            "params": {"num_relation_heads": 2},
        },
        {
            "module_T": "bert.encoder.layer.3.output",
            "module_S": "bert.encoder.layer.1.output",
            "loss": "cos",
            "weight": 1,
            "proj": ["linear", 16, 32],
        },
    ]
    distiller = Distillation(
        train_config(tmp_path, log_dir=str(tmp_path / "logs")),
        DistillationConfig(kd_loss_weight=0),
        teacher,
        student,
        bert_adaptor,
        bert_adaptor,
        custom_matches=customs,
    )
    before = snapshot(student)
    hooks_before = len(student.bert.encoder.layer[1].attention.self.query._forward_hooks)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    with distiller:
        assert len(student.bert.encoder.layer[1].attention.self.query._forward_hooks) == hooks_before + 1
        distiller.train(optimizer, None, dict_batches(tiny_data(16), 8), num_epochs=1)
    assert len(student.bert.encoder.layer[1].attention.self.query._forward_hooks) == hooks_before  # removed
    assert changed(before, student)
    assert len(distiller.custom_projections) == 2 and len(optimizer.param_groups) == 2
    scalars = read_scalars(tmp_path / "logs")
    assert scalars["loss/custom0_relation_kl"][0][1] > 0
    assert "loss/custom1_cos" in scalars


def test_custom_match_with_unknown_module_path_fails_at_construction(tmp_path) -> None:
    teacher, student = models()
    with pytest.raises(DistillError, match="did you mean 'bert.encoder.layer.1.output'"):
        Distillation(
            train_config(tmp_path),
            DistillationConfig(),
            teacher,
            student,
            bert_adaptor,
            bert_adaptor,
            custom_matches=[
                {"module_T": "bert.encoder.layer.3.output", "module_S": "bert.encoder.layer.1.outptu", "loss": "cos"}
            ],
        )


def test_multi_teacher_averages_teacher_logits(tmp_path) -> None:
    teachers = [confident(tiny_bert(32, 4, 4, seed=s)) for s in (10, 11)]
    student = confident(tiny_bert(16, 2, 2, seed=1))
    teacher_state = [snapshot(t) for t in teachers]
    config = DistillationConfig(temperature=2, intermediate_matches=[{**HIDDEN_MATCH, "teacher": 1}])
    distiller = MultiTeacherDistillation(
        train_config(tmp_path, log_dir=str(tmp_path / "logs")),
        config,
        teachers,
        student,
        bert_adaptor,
        bert_adaptor,
        teacher_weights=[1, 3],
    )
    batch = dict_batches(tiny_data(8), 8)[0]
    with torch.no_grad():  # the models are deterministic (no dropout): as the first step sees them
        logits_T = [teacher.eval()(**batch).logits for teacher in teachers]
        logits_S = student(**batch).logits
    with distiller:
        distiller.train(
            torch.optim.SGD(student.parameters(), lr=0.1), None, [batch] * 2, num_epochs=1, output_hidden_states=True
        )
    # the KD target is the teachers' logits averaged with the normalised weights 1/4 and 3/4
    kd_loss = get_loss("ce")
    expected = float(kd_loss(logits_S, 0.25 * logits_T[0] + 0.75 * logits_T[1], temperature=2))
    first_kd = read_scalars(tmp_path / "logs")["loss/kd"][0]
    assert first_kd == (1, pytest.approx(expected, rel=1e-5))
    unweighted = float(kd_loss(logits_S, 0.5 * logits_T[0] + 0.5 * logits_T[1], temperature=2))
    assert unweighted != pytest.approx(expected, rel=1e-3), "the weights must make a difference to this check"
    assert all(not changed(state, t) for state, t in zip(teacher_state, teachers))
    assert BasicMultiTeacherDistillation is MultiTeacherDistillation
    with pytest.raises(DistillError, match="teacher 2 does not exist"):
        MultiTeacherDistillation(
            train_config(tmp_path),
            DistillationConfig(intermediate_matches=[{**HIDDEN_MATCH, "teacher": 2}]),
            teachers,
            student,
            bert_adaptor,
            bert_adaptor,
        )


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ([float("nan"), 1], r"teacher_weights\[0\] must be a finite non-negative number .*got nan"),
        ([1, float("inf")], r"teacher_weights\[1\] must be a finite non-negative number .*got inf"),
        ([-1, 2], r"teacher_weights\[0\] must be a finite non-negative number .*got -1"),
        (["heavy", 1], r"teacher_weights\[0\] must be a finite non-negative number .*got 'heavy'"),
        ([None, 1], r"teacher_weights\[0\] must be a finite non-negative number .*got None"),
        ([0, 0], "teacher_weights must be 2 finite non-negative numbers with a positive sum"),
        ([1], "teacher_weights must be 2 finite non-negative numbers with a positive sum"),
    ],
)
def test_multi_teacher_refuses_weights_that_are_not_finite_non_negative(tmp_path, weights, message) -> None:
    """A NaN weight passed the old `w < 0` check and made every KD target NaN; a string failed inside float()."""
    teachers = [tiny_bert(32, 4, 4, seed=s) for s in (10, 11)]
    with pytest.raises(ValueError, match=message):
        MultiTeacherDistillation(
            train_config(tmp_path),
            DistillationConfig(),
            teachers,
            tiny_bert(16, 2, 2, seed=1),
            bert_adaptor,
            bert_adaptor,
            teacher_weights=weights,
        )


@pytest.mark.parametrize("weight", [-2.0, float("nan"), float("inf"), "heavy", None])
def test_multi_task_refuses_task_weights_that_are_not_finite_non_negative(tmp_path, weight) -> None:
    teachers = {"a": tiny_bert(32, 4, 4, seed=2), "b": tiny_bert(32, 4, 4, seed=3)}
    with pytest.raises(ValueError, match=r"task_weights\['b'\] must be a finite non-negative number"):
        MultiTaskDistillation(
            train_config(tmp_path),
            DistillationConfig(),
            teachers,
            tiny_bert(16, 2, 2, seed=1),
            {t: bert_adaptor for t in teachers},
            {t: bert_adaptor for t in teachers},
            task_weights={"a": 1.0, "b": weight},
        )


def test_multi_task_samples_tasks_by_size_and_passes_the_task(tmp_path) -> None:
    student = tiny_bert(16, 2, 2, seed=1)
    teachers = {"big": tiny_bert(32, 4, 4, seed=2), "small": tiny_bert(32, 4, 4, seed=3)}
    seen: list[str] = []

    def adaptor_S(batch, outputs, task):
        seen.append(task)
        return bert_adaptor(batch, outputs)

    loaders = {"big": dict_batches(tiny_data(72, seed=4), 8), "small": dict_batches(tiny_data(8, seed=5), 8)}
    distiller = MultiTaskDistillation(
        train_config(tmp_path),
        DistillationConfig(),
        teachers,
        student,
        {t: bert_adaptor for t in teachers},
        {t: adaptor_S for t in teachers},
        task_weights={"small": 2.0},
    )
    torch.manual_seed(0)
    with distiller:
        state = distiller.train(
            torch.optim.SGD(student.parameters(), lr=0.01), dataloaders=loaders, num_steps=60, tau=1.0
        )
    assert state.global_step == 60 and len(seen) == 60
    # sizes 9:1 batches, so "big" is drawn about 90% of the time
    assert 44 <= seen.count("big") <= 59 and seen.count("small") >= 1
    with pytest.raises(TypeError, match="dataloaders"):
        distiller.train(torch.optim.SGD(student.parameters(), lr=0.01), num_steps=2)


def test_probability_shift_swaps_on_a_copy() -> None:
    logits = torch.tensor([[1.0, 5.0, 2.0], [3.0, 0.0, 1.0]])
    original = logits.clone()
    shifted = probability_shift(logits, torch.tensor([2, 0]))
    assert torch.equal(shifted, torch.tensor([[1.0, 2.0, 5.0], [3.0, 0.0, 1.0]]))
    assert torch.equal(logits, original)
    token = probability_shift(logits.unsqueeze(0), torch.tensor([[0, -100]]))
    assert torch.equal(token[0, 0], torch.tensor([5.0, 1.0, 2.0])) and torch.equal(token[0, 1], original[1])


def test_probability_shift_in_training(tmp_path) -> None:
    """The KD target is the teacher's logits with the true label's logit swapped with the largest one."""
    teacher, student = (confident(model) for model in models())

    def adaptor(batch, outputs):
        return {**bert_adaptor(batch, outputs), "labels": batch["labels"]}

    batch = dict_batches(tiny_data(16), 16)[0]
    with torch.no_grad():  # the models are deterministic (no dropout): as the first step sees them
        logits_T = teacher.eval()(**batch).logits
        logits_S = student(**batch).logits
    labels = batch["labels"]
    top = logits_T.argmax(dim=-1)
    assert (top != labels).sum() >= 4, "the check needs rows where the teacher's top class is not the label"
    shifted = logits_T.clone()
    for row, (label, best) in enumerate(zip(labels.tolist(), top.tolist())):
        shifted[row, label], shifted[row, best] = logits_T[row, best], logits_T[row, label]

    distiller = BasicDistillation(
        train_config(tmp_path, log_dir=str(tmp_path / "logs")),
        DistillationConfig(probability_shift=True, temperature=2),
        teacher,
        student,
        adaptor,
        adaptor,
    )
    with distiller:
        distiller.train(torch.optim.SGD(student.parameters(), lr=0.01), None, [batch], num_epochs=1)
    kd_loss = get_loss("ce")
    first_kd = read_scalars(tmp_path / "logs")["loss/kd"][0]
    assert first_kd == (1, pytest.approx(float(kd_loss(logits_S, shifted, temperature=2)), rel=1e-5))
    unshifted = float(kd_loss(logits_S, logits_T, temperature=2))
    assert first_kd[1] != pytest.approx(unshifted, rel=1e-3)


def test_modes_restored_and_teacher_eval_outside_context(tmp_path) -> None:
    teacher, student = models()
    teacher.train()
    student.eval()
    modes = []

    def adaptor_T(batch, outputs):
        modes.append(teacher.training)
        return bert_adaptor(batch, outputs)

    distiller = BasicDistillation(
        train_config(tmp_path), DistillationConfig(), teacher, student, adaptor_T, bert_adaptor
    )
    distiller.train(
        torch.optim.SGD(student.parameters(), lr=0.01), None, dict_batches(tiny_data(16), 8), num_epochs=1
    )  # no `with`: the teacher still runs in eval mode
    assert modes == [False, False]
    assert teacher.training and not student.training  # restored

    with pytest.raises(RuntimeError, match="boom"):
        with distiller:
            assert not teacher.training and student.training
            raise RuntimeError("boom")
    assert teacher.training and not student.training  # restored even on error


def test_scheduler_built_before_projection_groups_is_refused(tmp_path) -> None:
    teacher, student = models()
    config = DistillationConfig(intermediate_matches=[HIDDEN_MATCH])
    # three runs of one distiller, each a new run in the same output_dir: each starts over
    training = train_config(tmp_path, overwrite_output_dir=True)
    distiller = Distillation(training, config, teacher, student, bert_adaptor, bert_adaptor)
    batches = dict_batches(tiny_data(16), 8)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    early = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    with pytest.raises(ValueError, match="cannot schedule their learning rate"):
        distiller.train(optimizer, early, batches, num_epochs=1, output_hidden_states=True)

    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    distiller.train(
        optimizer,
        lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 ** (step + 1)),
        batches,
        num_epochs=1,
        output_hidden_states=True,
    )
    # two steps: lr = base · 0.5³; the projection group's base lr is its own 0.01 (from proj[3])
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([0.0125, 0.00125])
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    distiller.train(
        optimizer,
        dataloader=batches,
        num_train_epochs=1,
        scheduler_class=torch.optim.lr_scheduler.StepLR,
        scheduler_args={"step_size": 1, "gamma": 0.1},
        output_hidden_states=True,
    )
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([0.001, 0.0001])


def test_auto_adaptor_for_hugging_face_outputs(tmp_path) -> None:
    teacher, student = models()
    config = DistillationConfig(hard_label_weight=1, intermediate_matches=[HIDDEN_MATCH])
    distiller = Distillation(train_config(tmp_path), config, teacher, student, None, None)
    before = snapshot(student)
    with distiller:
        distiller.train(
            torch.optim.SGD(student.parameters(), lr=0.1),
            None,
            dict_batches(tiny_data(16), 8),
            num_epochs=1,
            output_hidden_states=True,
        )
    assert changed(before, student)


def test_data_parallel_wrapped_models_work(tmp_path) -> None:
    teacher, student = models()
    wrapped_T, wrapped_S = torch.nn.DataParallel(teacher), torch.nn.DataParallel(student)
    distiller = Distillation(
        train_config(tmp_path),
        DistillationConfig(intermediate_matches=[HIDDEN_MATCH]),
        wrapped_T,
        wrapped_S,
        bert_adaptor,
        bert_adaptor,
        custom_matches=[
            {
                "module_T": "bert.encoder.layer.3.output",
                "module_S": "bert.encoder.layer.1.output",
                "loss": "cos",
                "proj": ["linear", 16, 32],
            }
        ],
    )
    before = snapshot(student)
    with distiller:
        distiller.train(
            torch.optim.SGD(wrapped_S.parameters(), lr=0.1),
            None,
            dict_batches(tiny_data(16), 8),
            num_epochs=1,
            output_hidden_states=True,
        )
    assert changed(before, student)
    saved = torch.load(tmp_path / "out" / "gs2.pkl", weights_only=True)
    assert set(saved) == set(student.state_dict())  # saved without the "module." prefix


def test_train_argument_errors(tmp_path) -> None:
    teacher, student = models()
    distiller = BasicDistillation(
        train_config(tmp_path), DistillationConfig(), teacher, student, bert_adaptor, bert_adaptor
    )
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="exactly one of num_epochs or num_steps"):
        distiller.train(optimizer, None, [], num_epochs=1, num_steps=3)
    with pytest.raises(ValueError, match="`num_epochs` to be a positive integer"):
        distiller.train(optimizer, None, [], num_epochs=0)
    with pytest.raises(DistillError, match="intermediate_matches; use Distillation"):
        BasicDistillation(
            train_config(tmp_path),
            DistillationConfig(intermediate_matches=[HIDDEN_MATCH]),
            teacher,
            student,
            bert_adaptor,
            bert_adaptor,
        )
    with pytest.raises(DistillError, match="nothing to train"):
        Distillation(
            train_config(tmp_path), DistillationConfig(kd_loss_weight=0), teacher, student, bert_adaptor, bert_adaptor
        )
