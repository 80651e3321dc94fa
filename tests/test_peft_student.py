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
    *, task_type: str | None = "CAUSAL_LM", seed: int = 1, target_modules: tuple[str, ...] = ("q_proj", "v_proj")
) -> nn.Module:
    config = peft.LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=list(target_modules), task_type=task_type
    )
    student = peft.get_peft_model(tiny_llama(width=16, seed=seed), config)
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
