"""Token-level distillation of generative models through the automatic adaptors, end to end in the loop.

Tiny random-init GPT-2 / Llama (causal) and T5 / BART (encoder-decoder) models; values are read back
from the event file (``log_steps=1``) and compared with hand-masked computations from the models'
own outputs.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from distill_core import DistillationConfig, Distillation, TrainingConfig
from distill_core.vocab import VocabularyMismatchError
from tests.tb_reader import read_scalars
from tests.tiny_lm import causal_batch, seq2seq_batch, tiny_bart, tiny_gpt2, tiny_llama, tiny_t5

MODELS = {"gpt2": tiny_gpt2, "llama": tiny_llama}


def confident(model: torch.nn.Module) -> torch.nn.Module:
    """A teacher with peaked next-token distributions (a random-init head gives nearly uniform ones)."""
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(20.0)
    return model


def make(tmp_path, teacher, student, *, adaptors=(None, None), **distill) -> Distillation:
    train = {
        "output_dir": str(tmp_path / "out"),
        "log_dir": str(tmp_path / "logs"),
        "progress_bar": False,
        "log_steps": 1,
    }
    train.update(distill.pop("training", {}))
    return Distillation(TrainingConfig(**train), DistillationConfig(**distill), teacher, student, *adaptors)


def first_logged(tmp_path, tag: str = "loss/kd") -> float:
    return read_scalars(tmp_path / "logs")[tag][0][1]


def hand_masked_kl(
    teacher, student, batch, temperature: float = 1.0, *, vocab_T: slice = slice(None), vocab_S: slice = slice(None)
) -> tuple[float, float]:
    """KL(teacher ‖ student) per next-token position, averaged over the positions that count, and over all.

    ``vocab_T`` and ``vocab_S`` pick the vocabulary entries of each side that are compared.
    """
    with torch.no_grad():
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits_T = teacher(**inputs).logits[:, :-1, vocab_T] / temperature
        logits_S = student(**inputs).logits[:, :-1, vocab_S] / temperature
    rows = (F.softmax(logits_T, -1) * (F.log_softmax(logits_T, -1) - F.log_softmax(logits_S, -1))).sum(-1)
    rows = rows * temperature**2
    keep = (
        (batch["labels"][:, 1:] != -100) & (batch["attention_mask"][:, 1:] > 0) & (batch["attention_mask"][:, :-1] > 0)
    )
    return float(rows[keep].mean()), float(rows.mean())


@pytest.mark.parametrize("family", sorted(MODELS))
@pytest.mark.parametrize("chunked", [None, False])
def test_causal_kd_through_the_automatic_adaptor_ignores_padding_and_ignored_labels(tmp_path, family, chunked):
    teacher, student = confident(MODELS[family](seed=0)), MODELS[family](width=16, seed=1)
    expected, unmasked = hand_masked_kl(teacher, student, causal_batch(), temperature=2.0)
    run = make(tmp_path, teacher, student, kd_loss_type="kl", temperature=2.0, chunked_token_kd=chunked)
    run.train(torch.optim.SGD(student.parameters(), lr=0.0), dataloader=[causal_batch()], num_epochs=1)
    assert first_logged(tmp_path) == pytest.approx(expected, rel=1e-5)
    # counting padding and the prompt's -100 positions would give a value 20 tolerances away
    assert abs(expected - unmasked) > 20 * 1e-5 * expected


def test_chunked_token_kd_trains_like_full_logits_and_builds_no_full_logits(tmp_path):
    teacher = tiny_gpt2(seed=0)
    students = {mode: tiny_gpt2(width=16, seed=1) for mode in ("chunked", "full")}
    shapes: list[tuple[int, ...]] = []
    students["chunked"].lm_head.register_forward_hook(lambda module, args, out: shapes.append(tuple(out.shape)))
    batches = [causal_batch(seed=seed) for seed in range(4)]
    for mode, student in students.items():
        run = make(
            tmp_path / mode,
            teacher,
            student,
            kd_loss_type="jsd",
            kd_loss_params={"beta": 0.5},
            hard_label_weight=0.5,
            chunked_token_kd=mode == "chunked",
            token_kd_chunk_size=4,
        )
        run.train(torch.optim.SGD(student.parameters(), lr=0.5), dataloader=batches, num_epochs=1)
    assert shapes and all(shape[1] == 1 for shape in shapes)  # the model's own head saw the last position only
    chunked, full = students["chunked"].state_dict(), students["full"].state_dict()
    gap = max((chunked[key] - full[key]).abs().max().item() for key in chunked)
    moved = max((full[key] - tiny_gpt2(width=16, seed=1).state_dict()[key]).abs().max().item() for key in full)
    assert gap < 1e-5 and moved > 1e-3
    for tag in ("loss/kd", "loss/hard_label"):
        chunked_values = [value for _, value in read_scalars(tmp_path / "chunked" / "logs")[tag]]
        full_values = [value for _, value in read_scalars(tmp_path / "full" / "logs")[tag]]
        assert chunked_values == pytest.approx(full_values, rel=1e-4)


@pytest.mark.parametrize("chunked", [None, False])
def test_accumulated_micro_batches_with_different_token_counts_equal_one_batch_holding_both(tmp_path, chunked):
    """Token KD is a mean over the step's valid tokens, not a mean of per-micro-batch means."""
    teacher = tiny_gpt2(seed=0)
    first, second = causal_batch(seed=3), causal_batch(seed=4)
    second["attention_mask"][:, 3:] = 0  # far fewer valid tokens in the second micro-batch
    second["labels"] = second["labels"].masked_fill(second["attention_mask"] == 0, -100)
    both = {key: torch.cat([first[key], second[key]]) for key in first}
    results = {}
    for name, batches, accumulation in (("split", [first, second], 2), ("one", [both], 1)):
        student = tiny_gpt2(width=16, seed=1)
        run = make(
            tmp_path / name,
            teacher,
            student,
            kd_loss_type="reverse_kl",
            chunked_token_kd=chunked,
            training={"gradient_accumulation_steps": accumulation},
        )
        run.train(torch.optim.SGD(student.parameters(), lr=1.0), dataloader=batches, num_epochs=1)
        results[name] = student.state_dict()
    gap = max((results["split"][key] - results["one"][key]).abs().max().item() for key in results["one"])
    assert gap < 1e-6



def test_an_accumulation_step_with_a_micro_batch_without_counted_tokens_trains_alike_on_both_paths(tmp_path):
    """One micro-batch of the step has no counted token (every label -100, e.g. prompt only): it adds
    nothing, and the step is one over the other micro-batch's tokens, on the chunked path and on the full
    logits (where Hugging Face's own loss over zero tokens is NaN)."""
    teacher = confident(tiny_llama(seed=0))
    counted, empty = causal_batch(seed=3), causal_batch(seed=4)
    empty["labels"][:] = -100
    runs = {
        "chunked": ([counted, empty], 2, None),
        "full": ([counted, empty], 2, False),
        "counted_alone": ([counted], 1, None),
    }
    weights, logged = {}, {}
    for name, (batches, accumulation, chunked) in runs.items():
        student = tiny_llama(width=16, seed=1)
        run = make(
            tmp_path / name,
            teacher,
            student,
            kd_loss_type="kl",
            hard_label_weight=0.5,
            chunked_token_kd=chunked,
            training={"gradient_accumulation_steps": accumulation},
        )
        run.train(torch.optim.SGD(student.parameters(), lr=0.5), dataloader=batches, num_epochs=1)
        weights[name] = student.state_dict()
        scalars = read_scalars(tmp_path / name / "logs")
        logged[name] = [scalars[tag][0][1] for tag in ("loss/kd", "loss/hard_label", "loss/total")]
    initial = tiny_llama(width=16, seed=1).state_dict()
    reference = weights["counted_alone"]
    assert max((reference[key] - initial[key]).abs().max().item() for key in reference) > 1e-3
    for name in ("chunked", "full"):
        assert logged[name] == pytest.approx(logged["counted_alone"], rel=1e-5), name
        assert max((weights[name][key] - reference[key]).abs().max().item() for key in reference) < 1e-5, name



def test_an_encoder_decoder_accumulation_step_with_a_micro_batch_without_counted_tokens_trains(tmp_path):
    teacher = tiny_t5(seed=0)
    counted, empty = seq2seq_batch(seed=3), seq2seq_batch(seed=4)
    empty["labels"][:] = -100
    weights = {}
    for name, batches, accumulation in (("split", [counted, empty], 2), ("counted_alone", [counted], 1)):
        student = tiny_t5(seed=1)
        run = make(
            tmp_path / name, teacher, student, kd_loss_type="kl", hard_label_weight=0.5,
            training={"gradient_accumulation_steps": accumulation},
        )
        run.train(torch.optim.SGD(student.parameters(), lr=0.5), dataloader=batches, num_epochs=1)
        weights[name] = student.state_dict()
    reference = weights["counted_alone"]
    assert max((weights["split"][key] - reference[key]).abs().max().item() for key in reference) < 1e-5


def seq2seq_hand_values(teacher, student, batch, layer: int) -> tuple[float, float]:
    with torch.no_grad():
        out_T = teacher(**batch, output_hidden_states=True)
        out_S = student(**batch, output_hidden_states=True)
    keep = batch["labels"] != -100
    rows = (F.softmax(out_T.logits, -1) * (F.log_softmax(out_T.logits, -1) - F.log_softmax(out_S.logits, -1))).sum(-1)
    squared = (out_S.decoder_hidden_states[layer] - out_T.decoder_hidden_states[layer]).pow(2)
    hidden = (squared * keep[..., None]).sum() / (keep.sum() * squared.shape[-1])
    return float(rows[keep].mean()), float(hidden)


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_encoder_decoder_kd_and_a_decoder_hidden_match_are_masked_by_the_decoder_mask(tmp_path, family):
    build = {"t5": tiny_t5, "bart": tiny_bart}[family]
    teacher, student = build(seed=0), build(seed=1)
    batch = seq2seq_batch()
    if family == "bart":
        batch["input_ids"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, 1)
    kd, hidden = seq2seq_hand_values(teacher, student, batch, layer=2)
    run = make(
        tmp_path,
        teacher,
        student,
        kd_loss_type="kl",
        temperature=1.0,
        intermediate_matches=[{"layer_T": 2, "layer_S": 2, "feature": "decoder_hidden", "loss": "hidden_mse"}],
    )
    run.train(
        torch.optim.SGD(student.parameters(), lr=0.0), dataloader=[batch], num_epochs=1, output_hidden_states=True
    )
    assert first_logged(tmp_path) == pytest.approx(kd, rel=1e-5)
    assert first_logged(tmp_path, "loss/match0_hidden_mse") == pytest.approx(hidden, rel=1e-5)


def test_a_bf16_student_with_a_projection_trains_on_the_cpu(tmp_path):
    teacher, student = tiny_llama(seed=0), tiny_llama(width=16, seed=1).to(torch.bfloat16)
    before = copy.deepcopy(student.state_dict())
    run = make(
        tmp_path,
        teacher,
        student,
        kd_loss_type="kl",
        hard_label_weight=0.5,
        intermediate_matches=[
            {"layer_T": 2, "layer_S": 2, "feature": "hidden", "loss": "hidden_mse", "proj": ["linear", 16, 32]}
        ],
        training={"mixed_precision": "bf16"},
    )
    run.train(
        torch.optim.AdamW(student.parameters(), lr=1e-2),
        dataloader=[causal_batch(seed=seed) for seed in range(3)],
        num_epochs=1,
        output_hidden_states=True,
    )
    assert run.projections[0].weight.dtype == torch.bfloat16  # projections follow the student's dtype
    logged = read_scalars(tmp_path / "logs")
    assert all(torch.isfinite(torch.tensor(value)) for _, value in logged["loss/total"])
    assert any(not torch.equal(before[key], value) for key, value in student.state_dict().items())


def test_different_vocabularies_stop_at_setup_naming_both_sizes(tmp_path):
    teacher, student = tiny_gpt2(seed=0), tiny_gpt2(vocab=120, seed=1)
    with pytest.raises(VocabularyMismatchError, match=r"teacher outputs 100 token logits and the student 120"):
        make(tmp_path, teacher, student, kd_loss_type="kl")
    # a padded vocabulary: compare the shared first 100 entries
    assert_cuts_the_shared_first_entries(tmp_path, teacher, student, padded="student", chunked=None)


@pytest.mark.parametrize("chunked", [False, True])
def test_a_padded_teacher_vocabulary_is_cut_too(tmp_path, chunked):
    """kd_vocab_size cuts whichever side is padded; before, only a padded student was cut (dense path)."""
    teacher, student = tiny_gpt2(vocab=120, seed=0), tiny_gpt2(seed=1)
    assert_cuts_the_shared_first_entries(tmp_path, teacher, student, padded="teacher", chunked=chunked)


def assert_cuts_the_shared_first_entries(tmp_path, teacher, student, *, padded: str, chunked: bool | None) -> None:
    """The logged KD of a run with ``kd_vocab_size=100`` is the KL over the first 100 entries of the
    ``padded`` side (120 entries), not over its last 100."""
    confident(teacher)
    argument = {"teacher": "vocab_T", "student": "vocab_S"}[padded]
    cuts = {"right": slice(None, 100), "wrong": slice(-100, None)}
    values = {
        name: hand_masked_kl(teacher, student, causal_batch(), 2.0, **{argument: cut})[0] for name, cut in cuts.items()
    }
    run = make(
        tmp_path, teacher, student, kd_loss_type="kl", temperature=2.0, kd_vocab_size=100, chunked_token_kd=chunked
    )
    run.train(torch.optim.SGD(student.parameters(), lr=0.0), dataloader=[causal_batch()], num_epochs=1)
    assert first_logged(tmp_path) == pytest.approx(values["right"], rel=1e-5)
    assert abs(values["right"] - values["wrong"]) > 20 * 1e-5 * values["right"]


def test_chunked_hard_labels_accept_int32_and_name_misaligned_labels(tmp_path):
    from distill_core import AdaptorError
    from distill_core.adaptors import auto_adaptor_for

    teacher, student = tiny_gpt2(seed=0), tiny_gpt2(seed=1)
    batch = {key: value.to(torch.int32) for key, value in causal_batch().items()}  # a numpy collator's dtype
    run = make(tmp_path / "int32", teacher, student, kd_loss_type="kl", hard_label_weight=1.0)
    run.train(torch.optim.SGD(student.parameters(), lr=0.1), dataloader=[batch], num_epochs=1)
    assert first_logged(tmp_path / "int32", "loss/hard_label") > 0

    automatic = auto_adaptor_for(student, chunked=True)

    def unshifted_labels(batch, outputs):
        results = dict(automatic(batch, outputs))
        results["labels"] = batch["labels"]  # (B, L), not aligned with the (B, L - 1) predicting positions
        return results

    unshifted_labels.model_kwargs = automatic.model_kwargs
    unshifted_labels.model_batch = automatic.model_batch
    run = make(
        tmp_path / "bad", teacher, student, adaptors=(None, unshifted_labels), kd_loss_type="kl",
        hard_label_weight=1.0,
    )
    with pytest.raises(AdaptorError, match=r"'labels' of shape \(\d+, \d+\) next to 'logits_hidden'.*labels\[:, 1:\]"):
        run.train(torch.optim.SGD(student.parameters(), lr=0.1), dataloader=[causal_batch()], num_epochs=1)
