"""The teacher-output cache in training: same losses as without it, top-k, staleness, corruption, kills.

Tiny real models (BERT classifiers from tests/_resume_worker.py, GPT-2 LMs from tests/tiny_lm.py),
real DataLoaders (shuffled, dynamic padding), real files. Torch runs one thread (tests/conftest.py),
so a run is deterministic and runs can be compared value by value.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from distill_core import AdaptorError, Distillation, DistillationConfig, DistillError, TrainingConfig
from distill_core import checkpoint as ckpt
from distill_core.teacher_cache.info import describe_cache
from distill_core.teacher_cache.store import read_records
from tests import _resume_worker as worker
from tests.test_no_sync import host_reads  # noqa: F401 (a fixture)
from tests.tiny_lm import PAD, VOCAB, tiny_gpt2

WORKER = Path(worker.__file__)
REPO = WORKER.parents[1]


class _Stop(Exception):
    pass


def record_terms(distiller: Any) -> list[torch.Tensor]:
    """Every micro-batch's unweighted loss terms, in order (a wrapper around compute_loss)."""
    terms: list[torch.Tensor] = []
    compute = distiller.compute_loss

    def recording(micro, progress, model_args, step):
        loss = compute(micro, progress, model_args, step)
        terms.append(torch.stack([part.detach() for part in loss.terms]))
        return loss

    distiller.compute_loss = recording
    return terms


def bert_run(
    output_dir: Path, cache: Any, *, stop_at: int | None = None, resume_from: str | None = None, **training: Any
) -> tuple[list[torch.Tensor], Any]:
    """The resume worker's run (shuffled loader, accumulation 2, hidden match through a projection,
    dropout in the student), 2 epochs of 5 steps, a checkpoint every 2 steps, a callback every 3."""
    distiller, optimizer, loader = worker.build(output_dir, teacher_cache=cache, eval_steps=3, **training)
    terms = record_terms(distiller)

    def callback(model, step):
        if step == stop_at:
            raise _Stop
        return worker.evaluate(model)

    torch.manual_seed(1234)
    try:
        with distiller:
            distiller.train(
                optimizer,
                lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / 20),
                loader,
                num_epochs=worker.EPOCHS,
                callback=callback,
                max_grad_norm=1.0,
                resume_from=resume_from,
                output_hidden_states=True,
            )
    except _Stop:
        pass
    return terms, distiller


def final_state(output_dir: Path) -> dict[str, Any]:
    return ckpt.load_state(ckpt.state_path(output_dir, worker.TOTAL_STEPS))


def assert_same_state(expected: dict[str, Any], actual: dict[str, Any]) -> None:
    from tests.test_checkpoint import assert_identical

    for key in ("student", "projections", "optimizer", "scheduler", "run_state", "rng"):
        assert_identical(expected[key], actual[key], key)


# -- must-show 1: the same losses, step by step, across a resume -------------------------------------
def test_cached_loss_terms_equal_uncached_step_by_step_and_across_a_resume(tmp_path) -> None:
    """Dense cache on disk, teacher in eval mode (the distiller's doing), same seed, shuffled loader,
    accumulation 2, hidden match with a projection. Epoch 1 builds the cache (the loss reads every
    batch back from its entries), epoch 2 reads reshuffled batches from it. A second cached run is
    interrupted at step 3 (its checkpoint is step 2, so the entries of step 3 were written after it)
    and resumed: its terms are the reference's and it ends bitwise equal to the uninterrupted run."""
    reference, _ = bert_run(tmp_path / "plain", None)
    cached, distiller = bert_run(tmp_path / "cached", str(tmp_path / "cache-a"))
    micro_per_epoch = 9  # 9 batches: 5 steps of 2, 2, 2, 2, 1
    assert len(reference) == len(cached) == 2 * micro_per_epoch
    summary = distiller.teacher_cache.last_summary["0"]
    assert summary["entries"] == worker.EXAMPLES and summary["stored"] == worker.EXAMPLES
    assert (summary["misses"], summary["hits"]) == (worker.EXAMPLES, worker.EXAMPLES)  # epoch 2: all hits
    for step, (expected, actual) in enumerate(zip(reference, cached)):
        if step < micro_per_epoch:  # the same batch the entries were made from: exact
            assert torch.equal(expected, actual), f"micro-batch {step}: {expected} vs {actual}"
        else:  # entries made in other batches of epoch 1: equal to float rounding of the teacher
            torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-7, msg=f"micro-batch {step}")
    first, _ = bert_run(tmp_path / "resumed", str(tmp_path / "cache-b"), stop_at=3)
    assert len(first) == 6 and [s for s, _ in ckpt.list_states(tmp_path / "resumed")] == [2]
    second, distiller = bert_run(tmp_path / "resumed", str(tmp_path / "cache-b"), resume_from="latest")
    resumed = first[:4] + second  # steps 1-2 before the checkpoint, then 3-10 after the resume
    assert len(resumed) == len(reference)
    for step, (expected, actual) in enumerate(zip(cached, resumed)):
        assert torch.equal(expected, actual), f"micro-batch {step} after the resume"
    stats = distiller.teacher_cache.last_summary["0"]
    assert stats["hits"] >= 4  # step 3's batches, stored by the interrupted run, were read back
    assert stats["stored"] == worker.EXAMPLES - 6 * worker.BATCH_SIZE  # it stored only what was missing
    assert_same_state(final_state(tmp_path / "cached"), final_state(tmp_path / "resumed"))


def test_a_run_killed_while_building_the_cache_resumes_with_a_consistent_cache(tmp_path) -> None:
    """SIGKILL at an arbitrary moment of epoch 1 (once 20 of 36 entries are recorded, mid-step 3): the
    resumed run continues the cache and ends bitwise equal to an uninterrupted cached run."""
    cache, out = tmp_path / "cache", tmp_path / "killed"
    env = {
        **os.environ,
        "DISTILL_PLUGIN_DISTRIBUTIONS": "distill",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    command = [sys.executable, str(WORKER), str(out), "--teacher-cache", str(cache), "--batch-delay", "0.05"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    index = cache / "teacher-0" / "rank-00000.index"
    try:
        torch.manual_seed(0)
        worker.run(tmp_path / "reference", teacher_cache=str(tmp_path / "reference-cache"))
        deadline = time.monotonic() + 300
        while not (index.exists() and index.stat().st_size >= 64 + 20 * 64):
            assert process.poll() is None, process.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the worker did not reach 20 cache entries in time"
            time.sleep(0.002)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL
    assert [step for step, _ in ckpt.list_states(out)] == [2]
    built = len(read_records(index)[0])
    assert 20 <= built < worker.EXAMPLES  # killed while the cache was being built
    done = subprocess.run(command[:-2] + ["--resume"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"finished at step {worker.TOTAL_STEPS}" in done.stdout
    assert_same_state(final_state(tmp_path / "reference"), final_state(out))
    info = describe_cache(cache, verify=True)["teachers"]["teacher-0"]
    assert info["entries"] == worker.EXAMPLES


# -- must-show 2: top-k with k = V, staleness, truncation ---------------------------------------------
def lm_data(n: int = 24, length: int = 10, seed: int = 3) -> list[dict[str, torch.Tensor]]:
    """Examples of 4..10 tokens (labels = the tokens), padded per batch by :func:`lm_collate`."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (n, length), generator=generator)
    lengths = torch.randint(4, length + 1, (n,), generator=generator).tolist()
    return [
        {"input_ids": ids[i, :size], "attention_mask": torch.ones(size, dtype=torch.long), "labels": ids[i, :size]}
        for i, size in enumerate(lengths)
    ]


def lm_collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Dynamic right padding to the longest example of the batch."""
    longest = max(len(item["input_ids"]) for item in items)

    def pad(tensor: torch.Tensor, value: int) -> torch.Tensor:
        return torch.cat([tensor, tensor.new_full((longest - len(tensor),), value)])

    return {
        "input_ids": torch.stack([pad(item["input_ids"], PAD) for item in items]),
        "attention_mask": torch.stack([pad(item["attention_mask"], 0) for item in items]),
        "labels": torch.stack([pad(item["labels"], -100) for item in items]),
    }


def lm_run(
    output_dir: Path,
    cache: Any,
    *,
    chunked: bool | None = None,
    kd: str = "kl",
    temperature: float = 2.0,
    teacher: torch.nn.Module | None = None,
    epochs: int = 1,
    data: list | None = None,
) -> tuple[list[torch.Tensor], Any]:
    teacher = teacher if teacher is not None else tiny_gpt2(seed=0)
    student = tiny_gpt2(width=16, seed=1).train()
    config = DistillationConfig(
        temperature=temperature, kd_loss_type=kd, hard_label_weight=0.5, chunked_token_kd=chunked, teacher_cache=cache
    )
    training = TrainingConfig(
        output_dir=str(output_dir), device="cpu", progress_bar=False, gradient_accumulation_steps=2, ckpt_steps=100
    )
    distiller = Distillation(training, config, teacher, student, None, None)
    terms = record_terms(distiller)
    loader = torch.utils.data.DataLoader(data or lm_data(), batch_size=4, shuffle=True, collate_fn=lm_collate)
    torch.manual_seed(1234)
    distiller.train(torch.optim.AdamW(student.parameters(), lr=1e-3), None, loader, num_epochs=epochs)
    return terms, distiller


@pytest.mark.parametrize("chunked", [None, False], ids=["chunked", "full-logits"])
@pytest.mark.parametrize(("kd", "temperature"), [("kl", 2.0), ("ce", 1.0), ("jsd", 3.0)])
def test_top_k_with_k_equal_to_v_reproduces_the_dense_losses(tmp_path, chunked, kd, temperature) -> None:
    """GPT-2 token KD (dynamic padding, shuffled): the KD and hard-label terms of every micro-batch with a
    top-k cache at k = V (float32 values) equal the uncached ones to 1e-6, on both KD paths."""
    dense, _ = lm_run(tmp_path / "dense", None, chunked=chunked, kd=kd, temperature=temperature, epochs=2)
    cache = {"top_k": VOCAB, "value_dtype": "float32"}
    top_k, distiller = lm_run(tmp_path / "topk", cache, chunked=chunked, kd=kd, temperature=temperature, epochs=2)
    assert distiller.teacher_cache.last_summary["0"]["hits"] == 24  # epoch 2 read every example back
    for step, (expected, actual) in enumerate(zip(dense, top_k)):
        torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-6, msg=f"micro-batch {step}")


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_top_k_rows_reach_the_loss_as_dense_logits_with_the_missing_mass_spread_or_dropped(temperature) -> None:
    """Peaked rows (like a trained LM's): softmax(chunk / T) is the tempered teacher distribution on the
    top k and m / (V - k) on every other entry, or 0 there with the top k renormalised; a plugin sees
    plain logits. bfloat16 keeps 8 significant bits of log p, so p itself is off by up to about
    |log p| / 2^9 (relative), plus the renormalisation by the softmax."""
    from distill_core.teacher_cache.topk import TeacherRows, encode_top_k, index_dtype

    generator = torch.Generator().manual_seed(0)
    vocab, k = 1000, 32
    logits = torch.randn(6, vocab, generator=generator) * 4
    p = torch.softmax(logits / temperature, -1)
    values, indices, mass = encode_top_k(logits, k, temperature, "bfloat16")
    assert values.dtype == torch.bfloat16 and indices.dtype == torch.uint16 and mass.dtype == torch.bfloat16
    top = torch.topk(p, k).indices
    assert torch.equal(indices.long().sort(-1).values, top.sort(-1).values)
    rest = torch.ones_like(p, dtype=torch.bool).scatter_(1, top, False)
    torch.testing.assert_close(mass.float(), (p * rest).sum(-1), rtol=1e-2, atol=0)
    mask = torch.ones(2, 3, dtype=torch.bool)

    def assert_within_bf16(got: torch.Tensor, expected: torch.Tensor) -> None:
        bound = expected.log().abs() / 2**8 + 5e-3
        assert ((got - expected).abs() / expected <= bound).all(), ((got - expected).abs() / expected).max()

    for missing in ("spread", "zero"):
        rows = TeacherRows(
            mask, vocab=vocab, top_k=(values, indices, mass), temperature=temperature, missing_mass=missing
        )
        q = torch.softmax(rows.chunk(0, 6) / temperature, -1)
        assert torch.allclose(q.sum(-1), torch.ones(6))
        if missing == "spread":
            assert_within_bf16(q.gather(1, top), p.gather(1, top))
            spread = ((p * rest).sum(-1, keepdim=True) / (vocab - k)).expand(6, vocab - k)
            torch.testing.assert_close(q[rest].view(6, -1), spread, rtol=2e-2, atol=0)
        else:
            assert torch.equal(q[rest], torch.zeros_like(q[rest]))
            assert_within_bf16(q.gather(1, top), p.gather(1, top) / p.gather(1, top).sum(-1, keepdim=True))
        assert torch.equal(rows.dense()[0].view(6, vocab), rows.chunk(0, 6))
    assert index_dtype(65_536) == torch.uint16 and index_dtype(65_537) == torch.int32


def test_a_top_k_cache_on_disk_holds_k_values_and_indices_per_token(tmp_path) -> None:
    """What a token costs on disk: 8 bfloat16 values, 8 uint16 indices and the mass (34 bytes), plus a
    64-byte record, the mask bits and alignment per example."""
    from distill_core.teacher_cache.info import describe_cache

    lm_run(tmp_path / "topk", {"location": str(tmp_path / "cache"), "top_k": 8})
    info = describe_cache(tmp_path / "cache")["teachers"]["teacher-0"]
    payload = sum(shard["data_bytes"] - 64 for shard in info["shards"].values())
    assert info["entries"] == 24 and info["tokens"] > 100
    assert info["tokens"] * 34 <= payload <= info["tokens"] * 34 + info["entries"] * (8 + 3 * 7)


def test_dense_entries_serve_any_temperature_and_top_k_entries_only_their_own(tmp_path) -> None:
    """Dense logits are stored raw: a cache built at T = 2 gives a T = 3 run exactly the uncached T = 3
    losses. Top-k rows are the tempered softmax: at another temperature they are stale."""
    cache = str(tmp_path / "dense")
    lm_run(tmp_path / "build", cache, temperature=2.0)
    reused, distiller = lm_run(tmp_path / "reuse", cache, temperature=3.0)
    plain, _ = lm_run(tmp_path / "plain", None, temperature=3.0)
    assert distiller.teacher_cache.last_summary["0"]["stored"] == 0  # every example read from the T = 2 build
    for step, (expected, actual) in enumerate(zip(plain, reused)):
        torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-7, msg=f"micro-batch {step}")
    top_k = {"location": str(tmp_path / "topk"), "top_k": 8}
    lm_run(tmp_path / "build-k", top_k, temperature=2.0)
    with pytest.raises(DistillError, match=r"temperature: 2\.0 when built, 3\.0 now"):
        lm_run(tmp_path / "reuse-k", top_k, temperature=3.0)


def test_a_teacher_changed_by_one_weight_is_refused_or_rebuilt(tmp_path) -> None:
    cache = str(tmp_path / "cache")
    bert_run(tmp_path / "first", cache)
    distiller, optimizer, loader = worker.build(tmp_path / "second", teacher_cache=cache)
    with torch.no_grad():
        distiller.teachers[0].classifier.weight[0, 0] += 1e-3
    with pytest.raises(DistillError) as caught:
        distiller.train(optimizer, None, loader, num_epochs=1, output_hidden_states=True)
    message = str(caught.value)
    assert "built for other outputs of teacher 0" in message and "the teacher's weights or class (weights:" in message
    assert "teacher-0" in message and "on_stale='rebuild'" in message
    # rebuilt: the same terms as an uncached run with the changed teacher
    changed = distiller.teachers[0]
    rebuilt, stale = _with_teacher(tmp_path / "rebuilt", {"location": cache, "on_stale": "rebuild"}, changed)
    plain, _ = _with_teacher(tmp_path / "plain", None, changed)
    assert all(torch.equal(a, b) for a, b in zip(plain, rebuilt))
    assert stale.teacher_cache.last_summary["0"]["stored"] == worker.EXAMPLES


def _with_teacher(output_dir: Path, cache: Any, teacher: torch.nn.Module) -> tuple[list[torch.Tensor], Any]:
    distiller, optimizer, loader = worker.build(output_dir, teacher_cache=cache, ckpt_steps=100)
    distiller.teachers[0].load_state_dict(teacher.state_dict())
    terms = record_terms(distiller)
    torch.manual_seed(1234)
    distiller.train(optimizer, None, loader, num_epochs=1, output_hidden_states=True)
    return terms, distiller


def test_an_example_changed_by_one_token_is_refused_or_rebuilt(tmp_path, monkeypatch) -> None:
    cache = str(tmp_path / "cache")
    bert_run(tmp_path / "first", cache)
    original = worker.dataset

    def one_token_changed() -> list[dict[str, torch.Tensor]]:
        data = original()
        data[5]["input_ids"] = data[5]["input_ids"].clone()
        data[5]["input_ids"][3] = (data[5]["input_ids"][3] + 1) % worker.VOCAB
        return data

    monkeypatch.setattr(worker, "dataset", one_token_changed)
    with pytest.raises(DistillError, match=r"example 5 \(dataset index\) is not the example the teacher cache stored"):
        bert_run(tmp_path / "second", cache)
    terms, distiller = bert_run(tmp_path / "rebuilt", {"location": cache, "on_stale": "rebuild"})
    summary = distiller.teacher_cache.last_summary["0"]
    assert summary["rebuilt"] == 1 and summary["stored"] == 1  # example 5 alone, in epoch 1
    plain, _ = bert_run(tmp_path / "plain", None)
    assert all(torch.equal(a, b) for a, b in zip(plain, terms))


def test_a_truncated_or_corrupt_cache_file_is_detected_naming_the_file(tmp_path) -> None:
    cache = tmp_path / "cache"
    bert_run(tmp_path / "first", str(cache))
    data = cache / "teacher-0" / "rank-00000.data"
    intact = data.read_bytes()
    data.write_bytes(intact[: len(intact) - 100])
    truncated = rf"{data}.* is truncated: the entry of example \d+ ends at byte"
    with pytest.raises(DistillError, match=truncated):
        bert_run(tmp_path / "second", str(cache))
    with pytest.raises(DistillError, match=truncated):  # `distill cache info` says the same, without --verify
        describe_cache(cache)
    corrupt = bytearray(intact)
    corrupt[200] ^= 0xFF
    data.write_bytes(bytes(corrupt))
    corrupt_entry = rf"{data}: the entry of example \d+ at byte \d+ is corrupt"
    with pytest.raises(DistillError, match=corrupt_entry):
        bert_run(tmp_path / "third", str(cache))
    assert describe_cache(cache)["teachers"]["teacher-0"]["entries"] > 0  # payloads are read with --verify only
    with pytest.raises(DistillError, match=corrupt_entry):
        describe_cache(cache, verify=True)
    (cache / "teacher-0" / "meta.json").write_text('{"fingerprint": ')
    with pytest.raises(DistillError, match=r"meta\.json cannot be read"):
        bert_run(tmp_path / "fourth", str(cache))


# -- what reaches the loss, and when the teacher runs --------------------------------------------------
def test_after_building_ahead_a_top_k_cache_the_teacher_never_runs(tmp_path) -> None:
    teacher = tiny_gpt2(seed=0)
    calls = []
    teacher.register_forward_hook(lambda *args: calls.append(1))
    config = DistillationConfig(
        temperature=1, kd_loss_type="kl", teacher_cache={"location": str(tmp_path / "c"), "top_k": 8}
    )
    student = tiny_gpt2(width=16, seed=1).train()
    distiller = Distillation(
        TrainingConfig(output_dir=str(tmp_path / "out"), device="cpu", progress_bar=False),
        config,
        teacher,
        student,
        None,
        None,
    )
    loader = torch.utils.data.DataLoader(lm_data(), batch_size=4, shuffle=True, collate_fn=lm_collate)
    summary = distiller.build_teacher_cache(loader)
    assert summary["0"]["stored"] == 24 and len(calls) == 6
    again = distiller.build_teacher_cache(loader)
    assert again["0"]["stored"] == 0 and len(calls) == 6  # everything stored: no teacher call
    distiller.train(torch.optim.AdamW(student.parameters(), lr=1e-3), None, loader, num_epochs=2)
    assert len(calls) == 6


def test_top_k_with_a_loss_on_logits_or_a_temperature_schedule_is_refused() -> None:
    from pydantic import ValidationError

    with pytest.raises(DistillError, match=r"kd_loss_type 'mse' changes its value when such a constant is added"):
        Distillation(
            TrainingConfig(device="cpu"),
            DistillationConfig(kd_loss_type="mse", teacher_cache={"top_k": 4}),
            tiny_gpt2(seed=0),
            tiny_gpt2(seed=1),
            None,
            None,
        )
    with pytest.raises(ValidationError, match="temperature_scheduler 'flsw' picks the temperature"):
        DistillationConfig(temperature_scheduler="flsw", teacher_cache={"top_k": 4})
    with pytest.raises(ValidationError, match="probability_shift=True swaps"):
        DistillationConfig(probability_shift=True, teacher_cache={"top_k": 4})
    with pytest.raises(ValidationError, match="top_k"):
        DistillationConfig(teacher_cache={"top_k": 0})


def test_multi_teacher_with_custom_matches_and_multi_task_runs_match_uncached(tmp_path) -> None:
    from distill_core import MultiTaskDistillation, MultiTeacherDistillation

    def multi_teacher(cache: Any) -> tuple[list, Any]:
        teachers = [worker.tiny_bert(32, 3, 2, seed=0), worker.tiny_bert(32, 3, 2, seed=5)]
        student = worker.tiny_bert(16, 2, 2, seed=1)
        custom = [
            {
                "module_T": "bert.encoder.layer.1.output",
                "module_S": "bert.encoder.layer.0.output",
                "loss": "hidden_mse",
                "proj": ["linear", 16, 32],
            }
        ]
        config = DistillationConfig(
            temperature=4, intermediate_matches=[dict(worker.MATCH, teacher=1)], teacher_cache=cache
        )
        training = TrainingConfig(
            output_dir=str(tmp_path / ("mt-cached" if cache else "mt")),  # one folder per run
            device="cpu",
            progress_bar=False,
            gradient_accumulation_steps=2,
            ckpt_steps=100,
        )
        distiller = MultiTeacherDistillation(
            training, config, teachers, student, worker.adaptor, worker.adaptor, custom_matches=custom
        )
        terms = record_terms(distiller)
        torch.manual_seed(1)
        loader = torch.utils.data.DataLoader(worker.dataset(), batch_size=4, shuffle=True)
        distiller.train(
            torch.optim.AdamW(student.parameters(), lr=1e-3), None, loader, num_epochs=2, output_hidden_states=True
        )
        return terms, distiller

    def multi_task(cache: Any) -> tuple[list, Any]:
        teachers, student, loaders = worker.two_task_run()
        config = DistillationConfig(
            hard_label_weight=0.5, intermediate_matches=[dict(worker.MATCH)], teacher_cache=cache
        )
        training = TrainingConfig(
            output_dir=str(tmp_path / ("task-cached" if cache else "task")),  # one folder per run
            device="cpu",
            progress_bar=False,
            gradient_accumulation_steps=2,
            ckpt_steps=100,
        )
        adaptors = {task: worker.adaptor for task in teachers}
        distiller = MultiTaskDistillation(training, config, teachers, student, adaptors, adaptors)
        terms = record_terms(distiller)
        torch.manual_seed(5)
        distiller.train(
            torch.optim.AdamW(student.parameters(), lr=1e-3),
            dataloaders=loaders,
            num_steps=12,
            output_hidden_states=True,
        )
        return terms, distiller

    for run, expected in ((multi_teacher, {"0": 36, "1": 36}), (multi_task, {"a": 24, "b": 12})):
        plain, _ = run(None)
        cached, distiller = run(str(tmp_path / f"cache-{run.__name__}"))
        summary = distiller.teacher_cache.last_summary
        assert {key: info["entries"] for key, info in summary.items()} == expected
        assert sum(info["hits"] for info in summary.values()) > 0
        assert all(torch.equal(a, b) for a, b in zip(plain, cached)) and len(plain) == len(cached)
    layout = (tmp_path / "cache-multi_teacher" / "teacher-0" / "meta.json").read_text()
    assert "bert.encoder.layer.1.output" in layout  # teacher 0 stores the custom-match feature


def test_memory_cache_lives_across_train_calls_and_logs_its_hit_rate(tmp_path) -> None:
    from tests.tb_reader import read_scalars

    # two runs of one distiller in its one output_dir: the second starts over
    distiller, optimizer, loader = worker.build(
        tmp_path,
        teacher_cache="memory",
        log_dir=str(tmp_path / "logs"),
        log_steps=5,
        ckpt_steps=100,
        overwrite_output_dir=True,
    )
    torch.manual_seed(0)
    distiller.train(optimizer, None, loader, num_epochs=1, output_hidden_states=True)
    assert distiller.teacher_cache.last_summary["0"]["stored"] == worker.EXAMPLES
    distiller.train(optimizer, None, loader, num_epochs=1, output_hidden_states=True)
    assert distiller.teacher_cache.last_summary["0"]["stored"] == 0  # the second call read every example
    scalars = read_scalars(tmp_path / "logs")
    assert [value for _, value in scalars["teacher_cache/entries"]][-1] == worker.EXAMPLES
    assert scalars["teacher_cache/hit_rate"][-1][1] == 1.0


def test_left_padding_and_a_non_cache_directory_are_refused_with_the_fix(tmp_path) -> None:
    batches = [
        {key: value.flip(-1) if value.dim() == 2 else value for key, value in batch.items()}
        for batch in _dict_batches()
    ]
    distiller, optimizer, _ = worker.build(tmp_path / "out", teacher_cache="memory")
    with pytest.raises(DistillError, match=r"row 0 of this batch's attention_mask is not ones followed by zeros"):
        distiller.train(optimizer, None, batches, num_epochs=1, output_hidden_states=True)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    distiller, optimizer, loader = worker.build(tmp_path / "out2", teacher_cache=str(busy))
    with pytest.raises(DistillError, match="non-empty directory without a teacher cache"):
        distiller.train(optimizer, None, loader, num_epochs=1, output_hidden_states=True)
    assert (busy / "notes.txt").read_text() == "mine"


def _dict_batches() -> list[dict[str, torch.Tensor]]:
    data = worker.dataset()
    return [torch.utils.data.default_collate(data[i : i + 4]) for i in range(0, len(data), 4)]


def test_a_list_of_batches_is_keyed_by_position_and_a_generator_is_refused(tmp_path) -> None:
    batches = _dict_batches()
    distiller, optimizer, _ = worker.build(tmp_path / "a", teacher_cache=str(tmp_path / "cache"), ckpt_steps=100)
    distiller.train(optimizer, None, batches, num_epochs=2, output_hidden_states=True)
    summary = distiller.teacher_cache.last_summary["0"]
    assert (summary["entries"], summary["hits"]) == (worker.EXAMPLES, worker.EXAMPLES)
    assert '"keys": "batch-position"' in (tmp_path / "cache" / "teacher-0" / "meta.json").read_text()
    distiller, optimizer, _ = worker.build(tmp_path / "b", teacher_cache="memory")
    with pytest.raises(DistillError, match="is a generator, which gives none; pass a torch DataLoader"):
        distiller.train(optimizer, None, (b for b in batches), num_steps=2, output_hidden_states=True)


def test_cache_info_prints_entries_bytes_per_token_and_fingerprint(tmp_path, capsys) -> None:
    from distill_core.cli import main
    from tests.conftest import run_cli

    lm_run(tmp_path / "out", {"location": str(tmp_path / "cache"), "top_k": 8})
    done = run_cli("cache", "info", str(tmp_path / "cache"), "--verify")
    assert done.returncode == 0, done.stderr
    assert "teacher-0: 24 entries," in done.stdout and "bytes/token" in done.stdout
    assert "GPT2LMHeadModel weights" in done.stdout and "every payload checksum verified" in done.stdout
    assert "rows['indices'] (N, 8) uint16" in done.stdout
    import json

    assert main(["cache", "info", str(tmp_path / "cache"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)["teachers"]["teacher-0"]
    assert info["entries"] == 24 and info["bytes_per_token"] == info["bytes"] / info["tokens"]
    assert info["outputs"]["top_k"] == 8 and info["fingerprint"]
    assert main(["cache", "info", str(tmp_path / "nothing")]) == 1
    assert "holds no teacher cache" in capsys.readouterr().err


def test_cache_hits_read_only_the_host_batch(tmp_path, host_reads) -> None:  # noqa: F811 (the fixture)
    """Epoch 2 reads every batch from the cache. The only tensor values read to the host then are the
    batch's own (lengths and content digests, tests/test_no_sync.py's recorder sees them in keys.py),
    taken before it moves to the device; nothing reads the losses or the teacher's rebuilt outputs."""
    distiller, optimizer, loader = worker.build(tmp_path, teacher_cache="memory", log_steps=100, ckpt_steps=100)
    marks: list[int] = []

    def mark(batch):
        marks.append(len(host_reads))
        return batch

    torch.manual_seed(0)
    distiller.train(optimizer, None, loader, num_epochs=2, batch_postprocessor=mark, output_hidden_states=True)
    epoch_2 = host_reads[marks[9] : marks[-1]]  # from the first batch of epoch 2 to the last one
    assert epoch_2, "the recorder saw nothing: the test would prove nothing"
    assert all("teacher_cache/keys.py" in read for read in epoch_2), epoch_2


def test_a_feature_the_teacher_does_not_return_is_named_before_anything_is_stored(tmp_path) -> None:
    match = dict(worker.MATCH, feature="attention", loss="attention_mse", proj=None, layer_S=1, layer_T=1)
    distiller, optimizer, loader = worker.build(tmp_path / "out", teacher_cache=str(tmp_path / "cache"), match=match)
    with pytest.raises(AdaptorError, match=r"needs 'attention' from the teacher's adaptor.*output_attentions=True"):
        distiller.train(optimizer, None, loader, num_epochs=1, output_hidden_states=True)
    assert all(not read_records(path)[0] for path in (tmp_path / "cache").rglob("rank-*.index"))
