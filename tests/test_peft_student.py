"""A peft (LoRA) student: chunked token KD reaches the base model through the wrapper, and checkpoints
hold what trains, not the frozen base.

Tiny random-init Llama teacher and student (tests/tiny_lm.py); the student is wrapped with
``peft.get_peft_model``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distill_core import AdaptorError, DistillationConfig, Distillation, DistillError, TrainingConfig
from distill_core.adaptors import LOGITS_TO_KEEP_ARGS, auto_adaptor_for, forward_keywords
from tests.tiny_lm import causal_batch, tiny_llama

peft = pytest.importorskip("peft")

BATCHES = [causal_batch(seed=seed) for seed in range(4)]


def lora_student(
    *,
    task_type: str | None = "CAUSAL_LM",
    seed: int = 1,
    width: int = 16,
    target_modules: tuple[str, ...] = ("q_proj", "v_proj"),
) -> nn.Module:
    config = peft.LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=list(target_modules), task_type=task_type
    )
    student = peft.get_peft_model(tiny_llama(width=width, seed=seed), config)
    torch.manual_seed(seed + 100)  # lora_B starts at zero: give it values so both adapter matrices get gradients
    with torch.no_grad():
        for name, parameter in student.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.1)
    return student


def confident_teacher() -> nn.Module:
    """A teacher with peaked next-token distributions (a random-init head gives nearly uniform ones)."""
    teacher = tiny_llama(seed=0)
    with torch.no_grad():
        teacher.get_output_embeddings().weight.mul_(20.0)
    return teacher


def distiller(tmp_path, teacher, student, **distill) -> Distillation:
    training = {
        "output_dir": str(tmp_path / "out"),
        "log_dir": str(tmp_path / "logs"),
        "progress_bar": False,
        **distill.pop("training", {}),
    }
    defaults = {"kd_loss_type": "kl", "temperature": 2.0, "hard_label_weight": 0.5, "token_kd_chunk_size": 4}
    config = DistillationConfig(**{**defaults, **distill})
    return Distillation(TrainingConfig(**training), config, teacher, student, None, None)


def trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def frozen(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}


# -- chunked token KD through the wrapper ---------------------------------------------------------
class KwargsWrapper(nn.Module):
    """A wrapper of the common shape: forward(**kwargs) passes everything to the model it holds."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, **kwargs):
        return self.model(**kwargs)


class NamedArgumentsWrapper(KwargsWrapper):
    def forward(self, input_ids=None, attention_mask=None, output_hidden_states=None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=output_hidden_states)


@pytest.mark.parametrize("task_type", [None, "CAUSAL_LM"])  # PeftModel, PeftModelForCausalLM
def test_a_peft_models_forward_is_read_through_to_the_base_models(task_type) -> None:
    student = lora_student(task_type=task_type)
    assert forward_keywords(student, (*LOGITS_TO_KEEP_ARGS, "use_cache")) == {"logits_to_keep", "use_cache"}
    adaptor = auto_adaptor_for(student, chunked=True)
    assert adaptor.model_kwargs == {"output_hidden_states": True, "logits_to_keep": 1, "use_cache": False}


def test_a_kwargs_wrapper_is_read_through_and_a_wrapper_naming_its_arguments_is_not() -> None:
    model = tiny_llama()
    assert forward_keywords(KwargsWrapper(model), LOGITS_TO_KEEP_ARGS) == {"logits_to_keep"}
    assert forward_keywords(KwargsWrapper(KwargsWrapper(model)), LOGITS_TO_KEEP_ARGS) == {"logits_to_keep"}
    assert forward_keywords(NamedArgumentsWrapper(model), LOGITS_TO_KEEP_ARGS) == set()
    assert forward_keywords(KwargsWrapper(NamedArgumentsWrapper(model)), LOGITS_TO_KEEP_ARGS) == set()


@pytest.mark.parametrize("task_type", [None, "CAUSAL_LM"])
def test_a_lora_student_with_chunked_token_kd_never_builds_full_logits_and_trains_its_adapters(
    tmp_path, task_type
) -> None:
    teacher = confident_teacher()
    students = {mode: lora_student(task_type=task_type) for mode in ("chunked", "full")}
    positions: list[int] = []
    head = students["chunked"].get_output_embeddings()
    head.register_forward_hook(lambda module, args, output: positions.append(output.shape[1]))
    before = {"trainable": trainable(students["chunked"]), "frozen": frozen(students["chunked"])}
    for mode, student in students.items():
        run = distiller(tmp_path / mode, teacher, student, chunked_token_kd=mode == "chunked")
        run.train(torch.optim.SGD(student.parameters(), lr=0.5), dataloader=BATCHES, num_epochs=1)

    assert len(positions) >= len(BATCHES) and set(positions) == {1}  # the last position only, at every step
    after = students["chunked"]
    assert before["trainable"].keys() and all("lora_" in name for name in before["trainable"])
    moved = {name: (value - before["trainable"][name]).abs().max().item() for name, value in trainable(after).items()}
    assert min(moved.values()) > 0 and max(moved.values()) > 1e-3, moved
    for name, value in frozen(after).items():
        assert torch.equal(value, before["frozen"][name]), name
    full = trainable(students["full"])  # the same training as with the full logits
    assert max((value - full[name]).abs().max().item() for name, value in trainable(after).items()) < 1e-6


class NoLogitsToKeepLlamaForCausalLM(nn.Module):
    """A causal LM whose forward names its arguments and has no logits_to_keep."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def get_output_embeddings(self) -> nn.Module:
        return self.model.get_output_embeddings()

    def forward(self, input_ids=None, attention_mask=None, output_hidden_states=None, use_cache=None):
        return self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_hidden_states=output_hidden_states,
            use_cache=use_cache,
        )


def test_chunked_token_kd_true_refuses_at_setup_a_student_that_would_build_full_logits(tmp_path) -> None:
    teacher, student = tiny_llama(seed=0), NoLogitsToKeepLlamaForCausalLM(tiny_llama(width=16, seed=1))
    with pytest.raises(
        DistillError,
        match=r"chunked_token_kd=True, but the student \(NoLogitsToKeep.*neither "
        r"logits_to_keep nor num_logits_to_keep.*\(B, L, V\) logits.*chunked_token_kd=None",
    ):
        distiller(tmp_path, teacher, student, chunked_token_kd=True)
    with pytest.raises(DistillError, match=r"but the teacher \(NoLogitsToKeep"):
        teacher_without = NoLogitsToKeepLlamaForCausalLM(tiny_llama(seed=0))
        distiller(tmp_path, teacher_without, tiny_llama(seed=1), chunked_token_kd=True)
    # None chunks the loss all the same (the model builds its logits, the divergence does not)
    run = distiller(tmp_path, teacher, student, chunked_token_kd=None)
    run.train(torch.optim.SGD(student.parameters(), lr=0.5), dataloader=BATCHES[:1], num_epochs=1)


def test_a_lora_adapter_on_the_output_head_is_not_chunked_away(tmp_path) -> None:
    """Chunked token KD computes logits from the head's weight and bias: an adapter on the head would never train."""
    with_head = ("q_proj", "lm_head")
    with pytest.raises(
        AdaptorError,
        match=r"output head \(Linear\) holds parameters besides its weight and bias "
        r"\(base_layer.weight, lora_A.default.weight, lora_B.default.weight\).*Leave the head out",
    ):
        distiller(tmp_path, tiny_llama(seed=0), lora_student(target_modules=with_head), chunked_token_kd=True)
    student = lora_student(target_modules=with_head)
    before = trainable(student)
    run = distiller(tmp_path, confident_teacher(), student, chunked_token_kd=None)  # None: this student's full logits
    run.train(torch.optim.SGD(student.parameters(), lr=0.5), dataloader=BATCHES[:2], num_epochs=1)
    head_adapter = [name for name in before if "lm_head.lora_" in name]
    assert len(head_adapter) == 2
    assert all(not torch.equal(trainable(student)[name], before[name]) for name in head_adapter)


# -- checkpoints ----------------------------------------------------------------------------------
class Interrupt(Exception):
    pass


def checkpointed_run(output, *, student=None, stop_at=None, resume_from=None, seed=1) -> nn.Module:
    """Six steps of a LoRA Llama student (width 32), a checkpoint every 2; the callback's metric makes best.pkl."""
    student = lora_student(seed=seed, width=32) if student is None else student
    run = distiller(
        output,
        confident_teacher(),
        student,
        chunked_token_kd=True,
        training={"ckpt_steps": 2, "device": "cpu"},
    )
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-2)

    def callback(model, step):
        if step == stop_at:
            raise Interrupt
        return -float(step)  # the best student is the first one

    batches = [causal_batch(seed=seed) for seed in range(6)]
    run.train(optimizer, dataloader=batches, num_epochs=1, callback=callback, resume_from=resume_from)
    return student


def state_size(state: dict[str, torch.Tensor], path) -> int:
    torch.save(state, path)
    return path.stat().st_size


def test_checkpoints_of_a_lora_student_hold_its_adapter_not_the_frozen_base(tmp_path) -> None:
    from distill_core.checkpoint import load_peft_student, load_state, load_student, state_path, student_path

    student = checkpointed_run(tmp_path)
    out = tmp_path / "out"
    adapter = set(peft.get_peft_model_state_dict(student))  # peft's names: lora_A.weight, without the adapter's
    trained = {name for name, p in student.named_parameters() if p.requires_grad}
    assert len(adapter) == len(trained) == 8

    saved = load_peft_student(student_path(out, 6))
    assert set(saved["state_dict"]) == adapter and set(load_student(student_path(out, 6))) == adapter
    assert saved["adapter_name"] == "default" and saved["peft_type"] == "LORA"
    assert saved["base_model_class"] == "LlamaForCausalLM"
    assert saved["peft_config"]["r"] == 4 and saved["peft_config"]["target_modules"] == ["q_proj", "v_proj"]
    assert set(load_student(out / "best.pkl")) == adapter
    full = load_state(state_path(out, 6))
    assert set(full["student"]) == trained
    assert set(full["student_peft"]["frozen"]) == set(student.state_dict()) - trained

    base_size = state_size(student.get_base_model().state_dict(), tmp_path / "base.pt")
    gs_size = student_path(out, 6).stat().st_size
    print(f"frozen base {base_size} bytes; gs6.pkl {gs_size} bytes; full state {state_path(out, 6).stat().st_size}")
    assert gs_size < base_size / 10
    assert state_size(full["student"], tmp_path / "student.pt") < base_size / 10
    assert state_path(out, 6).stat().st_size < base_size  # with the optimizer's state, RNG states and configs

    # the file says what to build: the base again, the adapter from its config; peft's loader fills it in
    rebuilt = peft.get_peft_model(tiny_llama(width=32, seed=1), peft.PeftConfig.from_peft_type(**saved["peft_config"]))
    with torch.no_grad():
        for parameter in rebuilt.parameters():
            if parameter.requires_grad:
                parameter.zero_()
    result = peft.set_peft_model_state_dict(rebuilt, load_student(student_path(out, 6)))
    assert not result.unexpected_keys
    for name, value in rebuilt.state_dict().items():
        assert torch.equal(value, student.state_dict()[name]), name


def test_a_base_parameter_trained_beside_the_adapter_is_kept_under_its_own_name(tmp_path) -> None:
    from distill_core.checkpoint import load_state, load_student, state_path, student_path

    student = lora_student(seed=1, width=32)
    norm = "base_model.model.model.norm.weight"
    student.get_parameter(norm).requires_grad_(True)  # the user trains the final norm too
    checkpointed_run(tmp_path, student=student)
    saved = load_student(student_path(tmp_path / "out", 6))
    assert norm in saved and len(saved) == 9
    assert norm in load_state(state_path(tmp_path / "out", 6))["student"]
    rebuilt = lora_student(seed=1, width=32)
    assert not torch.equal(rebuilt.get_parameter(norm), student.get_parameter(norm))  # it trained
    result = peft.set_peft_model_state_dict(rebuilt, saved)
    assert not result.unexpected_keys
    assert torch.equal(rebuilt.get_parameter(norm), student.get_parameter(norm))


def test_a_lora_student_resumed_from_its_checkpoint_ends_equal_to_an_uninterrupted_run(tmp_path) -> None:
    from distill_core.checkpoint import load_state, state_path, student_path

    checkpointed_run(tmp_path / "reference")
    with pytest.raises(Interrupt):
        checkpointed_run(tmp_path / "resumed", stop_at=4)
    resumed = checkpointed_run(tmp_path / "resumed", resume_from="latest")  # the student is built again
    expected = load_state(state_path(tmp_path / "reference" / "out", 6))
    actual = load_state(state_path(tmp_path / "resumed" / "out", 6))
    for key in ("student", "optimizer", "run_state", "rng"):
        assert_identical(expected[key], actual[key], key)
    assert expected["optimizer"]["state"]
    for name in ("gs6.pkl", "best.pkl"):
        assert_identical(
            torch.load(tmp_path / "reference" / "out" / name, weights_only=True),
            torch.load(tmp_path / "resumed" / "out" / name, weights_only=True),
            name,
        )
    assert set(expected["student"]) == {name for name, p in resumed.named_parameters() if p.requires_grad}
    assert student_path(tmp_path / "resumed" / "out", 6).is_file()


def assert_identical(expected, actual, where: str) -> None:
    if isinstance(expected, torch.Tensor):
        assert torch.equal(expected, actual), f"{where} differs"
    elif isinstance(expected, dict):
        assert set(expected) == set(actual), where
        for key in expected:
            assert_identical(expected[key], actual[key], f"{where}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert len(expected) == len(actual), where
        for index, (left, right) in enumerate(zip(expected, actual)):
            assert_identical(left, right, f"{where}[{index}]")
    else:
        assert expected == actual, where


def other_base_lora_student() -> nn.Module:
    """The same LoRA shapes on another base: a wider MLP, which the adapter (q_proj, v_proj) does not touch."""
    config = tiny_llama().config
    config.intermediate_size = 48
    torch.manual_seed(1)
    base = type(tiny_llama())(config).eval()
    lora = peft.LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"
    )
    return peft.get_peft_model(base, lora)


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (
            other_base_lora_student,
            r"student \(frozen base\)\.base_model\.model\.model\.layers\.0\.mlp\.down_proj\.weight: "
            r"shape \(32, 64\) in the checkpoint, \(32, 48\) now",
        ),
        (
            lambda: peft.get_peft_model(
                tiny_llama(width=32, seed=1),
                peft.LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
            ),
            r"student\.peft_config\.lora_alpha: checkpoint 8, now 16",
        ),
        (
            lambda: tiny_llama(width=32, seed=1),
            r"the checkpoint holds a peft model's trained weights \(adapter 'default'\) without its frozen base, "
            r"but this student is not a peft model",
        ),
    ],
    ids=["other base", "other adapter config", "not a peft model"],
)
def test_resuming_a_lora_checkpoint_with_another_student_is_refused(tmp_path, build, expected) -> None:
    from distill_core import CheckpointError
    from distill_core.checkpoint import state_path

    with pytest.raises(Interrupt):
        checkpointed_run(tmp_path, stop_at=2)
    with pytest.raises(CheckpointError, match=expected):
        checkpointed_run(tmp_path, student=build(), resume_from=str(state_path(tmp_path / "out", 2)))
