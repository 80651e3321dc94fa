"""OnPolicySampler (GKD): what a sampled batch holds, its masks, the coin, and the teacher scoring it in the loop."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from distill_core import Distillation, DistillationConfig, TrainingConfig
from distill_core.on_policy import OnPolicySampler, mask_after_eos
from tests.tb_reader import read_scalars
from tests.tiny_lm import PAD, VOCAB, causal_batch, tiny_llama

EOS = 2


class ScriptedGenerator(torch.nn.Module):
    """A stand-in student whose generate() appends fixed tokens, so masks can be checked exactly."""

    def __init__(self, continuation: list[list[int]]) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.continuation = torch.tensor(continuation)
        self.calls: list[dict] = []
        self.training_during_generate: list[bool] = []

    def generate(self, *, input_ids, attention_mask, **kwargs):
        self.calls.append({"input_ids": input_ids, "attention_mask": attention_mask, **kwargs})
        self.training_during_generate.append(self.training)
        return torch.cat([input_ids, self.continuation[: len(input_ids)]], dim=1)


def full_batch(rows: int = 2, length: int = 6) -> dict[str, torch.Tensor]:
    input_ids = torch.arange(10, 10 + rows * length).view(rows, length)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": input_ids.clone(),
            "example_index": torch.arange(rows)}


def test_mask_after_eos_keeps_the_first_eos_and_drops_what_follows():
    generated = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [0, 9, 9, 9]])
    assert mask_after_eos(generated, [2]).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]
    assert mask_after_eos(generated, [0, 2]).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert mask_after_eos(generated, []).all()


def test_sampled_batch_masks_the_prompt_and_everything_after_eos_and_drops_dataset_keys():
    student = ScriptedGenerator([[41, EOS, 43, 44], [51, 52, 53, 54]]).train()
    sampler = OnPolicySampler(student, probability=1.0, prompt_length=3, max_new_tokens=4, eos_token_id=EOS,
                              pad_token_id=PAD)
    batch = sampler(full_batch())
    # the prompt is each row's first 3 tokens; the rest of the incoming row is gone
    assert student.calls[0]["input_ids"].tolist() == [[10, 11, 12], [16, 17, 18]]
    assert batch["input_ids"].tolist() == [[10, 11, 12, 41, EOS, 43, 44], [16, 17, 18, 51, 52, 53, 54]]
    assert batch["labels"].tolist() == [[-100, -100, -100, 41, EOS, -100, -100], [-100, -100, -100, 51, 52, 53, 54]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0, 0], [1] * 7]
    # an on-policy batch is no dataset example: an index a teacher cache could look up must not survive
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert student.training and student.training_during_generate == [False]
    assert student.calls[0]["do_sample"] is True and student.calls[0]["max_new_tokens"] == 4
    assert sampler.stats.sampled_batches == 1 and sampler.stats.sampled_tokens == 2 + 4


def test_right_padded_prompts_are_left_padded_with_matching_positions():
    student = ScriptedGenerator([[61, 62], [71, 72], [81, 82]])
    sampler = OnPolicySampler(student, probability=1.0, prompt_length=6, max_new_tokens=2, eos_token_id=EOS,
                              pad_token_id=PAD)
    source = causal_batch()  # rows of 5, 8 and 7 real tokens, right-padded
    batch = sampler(source)
    prompts = student.calls[0]["input_ids"]
    assert prompts[0].tolist() == [PAD] + source["input_ids"][0, :5].tolist()  # 5 real tokens, left-padded
    assert prompts[1].tolist() == source["input_ids"][1, :6].tolist()
    assert student.calls[0]["attention_mask"][0].tolist() == [0, 1, 1, 1, 1, 1]
    assert batch["position_ids"][0].tolist() == [0, 0, 1, 2, 3, 4, 5, 6]
    assert batch["position_ids"][1].tolist() == list(range(8))
    assert batch["labels"][0].tolist() == [-100] * 6 + [61, 62]


def test_prompts_take_each_rows_first_real_tokens_whatever_the_padding():
    """Left, right and inner padding: each prompt is the row's first real tokens, right-aligned."""
    generator = torch.Generator().manual_seed(4)
    input_ids = torch.randint(3, 50, (6, 9), generator=generator)
    real = torch.rand((6, 9), generator=generator) > 0.4
    real[:, 4] = True  # every row has a real token
    sampler = OnPolicySampler(ScriptedGenerator([[1]] * 6), probability=1.0, prompt_length=4, max_new_tokens=1,
                              pad_token_id=PAD)
    prompts, prompt_mask = sampler.prompts({"input_ids": input_ids, "attention_mask": real.long()})
    width = min(4, int(real.sum(1).max()))
    for row in range(6):
        tokens = input_ids[row][real[row]][:4].tolist()
        assert prompts[row].tolist() == [PAD] * (width - len(tokens)) + tokens
        assert prompt_mask[row].tolist() == [0] * (width - len(tokens)) + [1] * len(tokens)


def test_the_coin_replaces_about_lambda_of_the_batches():
    student = ScriptedGenerator([[1, 1]] * 2)
    torch.manual_seed(0)
    sampler = OnPolicySampler(student, probability=0.3, prompt_length=2, max_new_tokens=2, pad_token_id=PAD)
    batch = full_batch()
    replaced = sum(sampler(batch) is not batch for _ in range(400))
    assert 90 <= replaced <= 150 and sampler.stats.sampled_batches == replaced and sampler.stats.batches == 400
    never = OnPolicySampler(student, probability=0.0, prompt_length=2, max_new_tokens=2, pad_token_id=PAD)
    assert all(never(batch) is batch for _ in range(20))


@pytest.mark.parametrize(("kwargs", "message"), [({"probability": 1.5}, "`probability` to be in [0, 1]"),
                                                 ({"prompt_length": 0}, "`prompt_length` to be a positive integer"),
                                                 ({"temperature": 0.0}, "`temperature` to be positive")])
def test_bad_arguments_are_refused(kwargs, message):
    arguments = {"probability": 0.5, "prompt_length": 2, "max_new_tokens": 2, **kwargs}
    with pytest.raises(ValueError, match=re.escape(message)):
        OnPolicySampler(tiny_llama(), **arguments)


def test_a_model_without_generate_and_a_batch_without_input_ids_are_refused():
    with pytest.raises(TypeError, match="lacks"):
        OnPolicySampler(torch.nn.Linear(2, 2), probability=1.0, prompt_length=2, max_new_tokens=2)
    sampler = OnPolicySampler(tiny_llama(), probability=1.0, prompt_length=2, max_new_tokens=2)
    with pytest.raises(ValueError, match="'input_ids' of shape"):
        sampler({"tokens": torch.ones(2, 3, dtype=torch.long)})


def test_a_real_student_samples_continuations_of_its_own_prompts():
    student = tiny_llama(seed=3).train()
    torch.manual_seed(0)
    sampler = OnPolicySampler(student, probability=1.0, prompt_length=4, max_new_tokens=5, pad_token_id=PAD)
    batch = sampler(full_batch(rows=3, length=8) | {"input_ids": torch.randint(3, VOCAB, (3, 8))})
    assert batch["input_ids"].shape[0] == 3 and 4 < batch["input_ids"].shape[1] <= 9
    assert (batch["labels"][:, :4] == -100).all()
    kept = batch["attention_mask"][:, 4:].bool()
    assert torch.equal(batch["labels"][:, 4:][kept], batch["input_ids"][:, 4:][kept])
    assert student.training


def test_in_the_loop_the_teacher_scores_the_sampled_batch_on_the_sampled_positions_only(tmp_path):
    teacher, student = tiny_llama(seed=0), tiny_llama(width=16, seed=1)
    with torch.no_grad():
        teacher.get_output_embeddings().weight.mul_(20.0)  # peaked teacher distributions
    seen: list[torch.Tensor] = []
    teacher.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs["input_ids"]), with_kwargs=True)
    torch.manual_seed(0)
    sampler = OnPolicySampler(student, probability=1.0, prompt_length=3, max_new_tokens=4, eos_token_id=EOS,
                              pad_token_id=PAD)
    sampled: list[dict[str, torch.Tensor]] = []

    def record(batch):
        sampled.append(sampler(batch))
        return sampled[-1]

    run = Distillation(TrainingConfig(output_dir=str(tmp_path / "out"), log_dir=str(tmp_path / "logs"),
                                      progress_bar=False, log_steps=1),
                       DistillationConfig(kd_loss_type="kl", temperature=1.0), teacher, student, None, None)
    run.train(torch.optim.SGD(student.parameters(), lr=0.0), dataloader=[full_batch(rows=2, length=8)],
              num_epochs=1, batch_postprocessor=record)
    batch = sampled[0]
    assert torch.equal(seen[0], batch["input_ids"])  # the teacher ran on the sampled batch, not the original
    with torch.no_grad():
        logits_T = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        logits_S = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    rows = (F.softmax(logits_T, -1) * (F.log_softmax(logits_T, -1) - F.log_softmax(logits_S, -1))).sum(-1)
    real = batch["attention_mask"].bool()
    keep = (batch["labels"][:, 1:] != -100) & real[:, 1:] & real[:, :-1]
    assert int(keep.sum()) <= 2 * 4 and not keep[:, :2].any()  # prompt predictions never count
    logged = read_scalars(tmp_path / "logs")["loss/kd"][0][1]
    assert logged == pytest.approx(float(rows[keep].mean()), rel=1e-5)
    assert abs(float(rows.mean()) - logged) > 1e-3  # counting the prompt would give another value


def test_with_a_teacher_cache_sampled_batches_run_the_teacher_and_the_others_read_the_cache(tmp_path):
    """A sampled batch is no dataset example: it must neither be stored under the loader's index (the next
    epoch would find another example there: a stale-cache error) nor be served from the cache."""
    teacher, student = tiny_llama(seed=0), tiny_llama(width=16, seed=1)
    calls: list[torch.Tensor] = []
    teacher.register_forward_pre_hook(lambda module, args, kwargs: calls.append(kwargs["input_ids"]),
                                      with_kwargs=True)
    data = [{"input_ids": row, "attention_mask": torch.ones_like(row)}
            for row in torch.randint(3, VOCAB, (8, 8), generator=torch.Generator().manual_seed(5))]
    loader = torch.utils.data.DataLoader(data, batch_size=2, shuffle=True)
    sampler = OnPolicySampler(student, probability=0.5, prompt_length=3, max_new_tokens=4, eos_token_id=EOS,
                              pad_token_id=PAD)
    coins: list[bool] = []

    def record(batch):
        out = sampler(batch)
        coins.append(out is not batch)
        return out

    record.makes_new_examples = True  # a wrapper around the sampler declares what the sampler does
    torch.manual_seed(0)
    run = Distillation(TrainingConfig(output_dir=str(tmp_path / "out"), progress_bar=False),
                       DistillationConfig(kd_loss_type="kl", temperature=1.0,
                                          teacher_cache={"location": str(tmp_path / "cache"), "top_k": 8,
                                                         "on_stale": "error"}),
                       teacher, student, None, None)
    run.train(torch.optim.SGD(student.parameters(), lr=1e-3), dataloader=loader, num_epochs=3,
              batch_postprocessor=record)
    # 3 epochs under on_stale="error": nothing sampled was ever stored under a dataset index
    assert any(coins[4:]) and not all(coins[4:])
    stats = run.teacher_cache.last_summary["0"]
    unsampled = coins.count(False)
    assert stats["hits"] + stats["misses"] == 2 * unsampled  # only unsampled batches were looked up
    assert stats["stored"] == stats["misses"] == stats["entries"] and stats["hits"] > 0
    # the teacher ran on every sampled batch, and on the unsampled ones that missed
    assert sum(coins) < len(calls) <= sum(coins) + stats["misses"]


def test_build_teacher_cache_refuses_a_postprocessor_that_makes_new_examples(tmp_path):
    teacher, student = tiny_llama(seed=0), tiny_llama(width=16, seed=1)
    run = Distillation(TrainingConfig(output_dir=str(tmp_path / "out"), progress_bar=False),
                       DistillationConfig(kd_loss_type="kl", teacher_cache="memory"), teacher, student, None, None)
    sampler = OnPolicySampler(student, probability=1.0, prompt_length=3, max_new_tokens=4, pad_token_id=PAD)
    with pytest.raises(Exception, match="makes new examples.*build the cache without it"):
        run.build_teacher_cache([causal_batch()], batch_postprocessor=sampler)
