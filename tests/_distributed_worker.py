"""Distillation runs for the torch.distributed tests, launched under ``torchrun`` (or in-process).

Two workloads, the same in every process:

- ``bert``: a tiny BERT classifier teacher (width 32) and student (width 16), KD on (B, C) logits and
  a hidden-state match through a projection, unpadded inputs, gradient clipping.
- ``gpt2``: a tiny GPT-2 teacher and student through the automatic causal-LM adaptor, token-level KD
  on (B, L, V) logits with padding that differs from batch to batch, so the ranks of a step see
  different numbers of valid tokens (the KD mean must still be the step's token mean).

Data: a DataLoader over a list of examples with ``batch_size`` per process and no shuffling, so two
processes with batch 4 see, step by step, the same examples as one process with batch 8.

LR schedule: the README's pattern as users write it, ``scheduler=lambda opt:
get_linear_schedule_with_warmup(opt, 0, len(loader) * epochs)``, with ``loader`` the script's own
(unsharded) DataLoader: the same script must give the same schedule under torchrun.

    torchrun --standalone --nproc_per_node 2 tests/_distributed_worker.py OUT --workload bert \\
        [--fsdp student|teachers] [--resume] [--block-at STEP --marker FILE]
        [--shuffle] [--teacher-cache DIR]

``--shuffle`` shuffles the DataLoader (under torchrun: a reshuffling DistributedSampler);
``--teacher-cache DIR`` stores the teacher's outputs there and prints each rank's cache counts.
"""

from __future__ import annotations

import argparse
import atexit
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from distill_core import Distillation, DistillationConfig, TrainingConfig  # noqa: E402

EXAMPLES, LENGTH, VOCAB = 32, 10, 100
STEPS_PER_EPOCH = 4  # at 8 examples per optimisation step
EPOCHS = 2
TOTAL_STEPS = STEPS_PER_EPOCH * EPOCHS


def bert_models() -> tuple[torch.nn.Module, torch.nn.Module]:
    from transformers import BertConfig, BertForSequenceClassification

    def make(width: int, layers: int, seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        return BertForSequenceClassification(
            BertConfig(
                vocab_size=VOCAB,
                hidden_size=width,
                num_hidden_layers=layers,
                num_attention_heads=2,
                intermediate_size=width * 2,
                max_position_embeddings=LENGTH * 2,
                num_labels=3,
                hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0,
                attn_implementation="eager",
            )
        )

    return make(32, 2, 0), make(16, 2, 1)


def gpt2_models() -> tuple[torch.nn.Module, torch.nn.Module]:
    from transformers import GPT2Config, GPT2LMHeadModel

    def make(width: int, seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        return GPT2LMHeadModel(
            GPT2Config(
                vocab_size=VOCAB,
                n_embd=width,
                n_layer=2,
                n_head=2,
                n_positions=LENGTH * 2,
                resid_pdrop=0.0,
                embd_pdrop=0.0,
                attn_pdrop=0.0,
                attn_implementation="eager",
            )
        )

    return make(32, 0), make(16, 1)


def examples(workload: str) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(7)
    input_ids = torch.randint(3, VOCAB, (EXAMPLES, LENGTH), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    if workload == "gpt2":  # right padding of 0..7 tokens, different on every example
        lengths = torch.randint(3, LENGTH + 1, (EXAMPLES,), generator=generator)
        attention_mask = (torch.arange(LENGTH)[None, :] < lengths[:, None]).long()
    labels = torch.randint(0, 3, (EXAMPLES,), generator=generator)
    data = []
    for i in range(EXAMPLES):
        example = {"input_ids": input_ids[i] * attention_mask[i], "attention_mask": attention_mask[i]}
        if workload == "gpt2":
            example["labels"] = torch.where(attention_mask[i] > 0, input_ids[i], torch.tensor(-100))
        else:
            example["labels"] = labels[i]
        data.append(example)
    return data


def bert_adaptor(batch: dict[str, torch.Tensor], outputs: Any) -> dict[str, Any]:
    return {"logits": outputs.logits, "hidden": outputs.hidden_states}


def build(
    output_dir: str | Path,
    workload: str,
    *,
    batch_size: int,
    fsdp: list[str],
    shuffle: bool = False,
    teacher_cache: str | None = None,
    **training: Any,
) -> tuple:
    options = {
        "output_dir": str(output_dir),
        "log_dir": str(Path(output_dir) / "logs"),
        "device": "cpu",
        "progress_bar": False,
        "log_steps": 2,
        "ckpt_steps": 2,
        "fsdp": fsdp,
        **training,
    }
    if workload == "bert":
        teacher, student = bert_models()
        config = DistillationConfig(
            temperature=2,
            kd_loss_type="kl",
            intermediate_matches=[
                {"layer_T": 2, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "proj": ["linear", 16, 32]}
            ],
            teacher_cache=teacher_cache,
        )
        distiller = Distillation(TrainingConfig(**options), config, teacher, student, bert_adaptor, bert_adaptor)
    else:
        teacher, student = gpt2_models()
        config = DistillationConfig(temperature=1, kd_loss_type="kl", teacher_cache=teacher_cache)
        distiller = Distillation(TrainingConfig(**options), config, teacher, student, None, None)
    loader = torch.utils.data.DataLoader(examples(workload), batch_size=batch_size, shuffle=shuffle)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-2)
    return distiller, optimizer, loader


def run(
    output_dir: str | Path,
    workload: str,
    *,
    batch_size: int,
    fsdp: list[str] | None = None,
    resume: bool = False,
    block_at: int | None = None,
    marker: str | None = None,
    shuffle: bool = False,
    teacher_cache: str | None = None,
    **training: Any,
) -> Any:
    """Train (or resume) in ``output_dir``; returns the final RunState."""
    distiller, optimizer, loader = build(
        output_dir,
        workload,
        batch_size=batch_size,
        fsdp=fsdp or [],
        shuffle=shuffle,
        teacher_cache=teacher_cache,
        **training,
    )

    def callback(model: torch.nn.Module, step: int) -> float:
        print(f"rank {os.environ.get('RANK', '0')}: callback at step {step}", flush=True)
        if step == block_at:
            Path(marker).write_text(str(step))
            time.sleep(600)  # the test kills the process group here
        return float(step)

    random.seed(11)  # every RNG a checkpoint captures starts the same in every run
    numpy.random.seed(13)
    torch.manual_seed(1234)
    from transformers import get_linear_schedule_with_warmup

    with distiller:
        state = distiller.train(
            optimizer,
            lambda opt: get_linear_schedule_with_warmup(opt, 0, len(loader) * EPOCHS),
            loader,
            num_epochs=EPOCHS,
            callback=callback,
            max_grad_norm=1.0,
            resume_from="latest" if resume else None,
            output_hidden_states=workload == "bert",
        )
    lrs = " ".join(f"{group['lr']:.6g}" for group in optimizer.param_groups)
    print(f"rank {os.environ.get('RANK', '0')}: final lr {lrs}", flush=True)
    if distiller.teacher_cache is not None:
        summary = distiller.teacher_cache.last_summary["0"]
        counts = " ".join(f"{name}={summary[name]}" for name in ("hits", "misses", "stored", "entries"))
        print(f"rank {os.environ.get('RANK', '0')}: teacher cache {counts}", flush=True)
    return state


def run_every_distiller(output_dir: str | Path, *, batch_size: int) -> dict[str, dict[str, torch.Tensor]]:
    """BasicTraining, MultiTeacherDistillation and MultiTaskDistillation, a few steps each.

    Returns each run's final student weights (every rank returns its own copy).
    """
    from distill_core import BasicTraining, MultiTaskDistillation, MultiTeacherDistillation

    def loader() -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(examples("bert"), batch_size=batch_size, shuffle=False)

    def training(name: str) -> TrainingConfig:
        return TrainingConfig(output_dir=str(Path(output_dir) / name), device="cpu", progress_bar=False, log_steps=2)

    def classifier_adaptor(batch: dict[str, torch.Tensor], outputs: Any) -> dict[str, Any]:
        return {"logits": outputs.logits, "losses": [outputs.loss]}

    results = {}
    torch.manual_seed(5)
    _, model = bert_models()
    trainer = BasicTraining(training("basic"), model, classifier_adaptor)
    trainer.train(torch.optim.AdamW(model.parameters(), lr=1e-2), dataloader=loader(), num_epochs=1)
    results["basic"] = {k: v.detach().clone() for k, v in trainer.student.state_dict().items()}

    teachers = [bert_models()[0], bert_models()[0]]
    with torch.no_grad():
        teachers[1].classifier.weight.mul_(-1.0)  # a second, different teacher
    _, student = bert_models()
    multi = MultiTeacherDistillation(
        training("multi_teacher"), DistillationConfig(temperature=2), teachers, student, None, None
    )
    multi.train(torch.optim.AdamW(student.parameters(), lr=1e-2), dataloader=loader(), num_epochs=1)
    results["multi_teacher"] = {k: v.detach().clone() for k, v in multi.student.state_dict().items()}

    _, student = bert_models()
    tasks = MultiTaskDistillation(
        training("multi_task"),
        DistillationConfig(temperature=2),
        {"a": bert_models()[0], "b": teachers[1]},
        student,
        {"a": None, "b": None},
        {"a": None, "b": None},
    )
    tasks.train(
        torch.optim.AdamW(student.parameters(), lr=1e-2), dataloaders={"a": loader(), "b": loader()}, num_steps=4
    )
    results["multi_task"] = {k: v.detach().clone() for k, v in tasks.student.state_dict().items()}
    return results


_COMPLETED = False  # main() returned: the rank's results are written and reported


def _report_group_at_exit() -> None:
    """Registered before distill's own exit handler, so it runs after it (atexit runs last-in, first-out).

    A rank that completed then leaves with os._exit(0), skipping the interpreter's teardown: there, twice in
    about two hundred torchrun runs, a finished rank aborted with SIGABRT ("terminate called without an
    active exception") inside torch's C++ destructors, the second time with the process group destroyed. The tests
    check distill's results and its exit handler, not that teardown; a rank that failed exits normally,
    with its error code.
    """
    state = "still initialised" if torch.distributed.is_initialized() else "destroyed"
    print(f"rank {os.environ.get('RANK', '0')}: process group {state} at exit", flush=True)
    if _COMPLETED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir")
    parser.add_argument("--workload", choices=["bert", "gpt2"], default="bert")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--fsdp", action="append", default=[])
    parser.add_argument("--accumulation", type=int, default=1)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--block-at", type=int)
    parser.add_argument("--marker")
    parser.add_argument("--shuffle", action="store_true")
    parser.add_argument("--teacher-cache")
    parser.add_argument("--every-distiller", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    # registered before distill joins the group, so it runs after distill's own exit handler (LIFO)
    atexit.register(_report_group_at_exit)
    if args.every_distiller:
        results = run_every_distiller(args.output_dir, batch_size=args.batch_size)
        torch.save(results, Path(args.output_dir) / f"weights-rank{os.environ.get('RANK', '0')}.pt")
        print(f"rank {os.environ.get('RANK', '0')}: every distiller finished", flush=True)
        _completed()
        return
    state = run(
        args.output_dir,
        args.workload,
        batch_size=args.batch_size,
        fsdp=args.fsdp,
        resume=args.resume,
        block_at=args.block_at,
        marker=args.marker,
        gradient_accumulation_steps=args.accumulation,
        shuffle=args.shuffle,
        teacher_cache=args.teacher_cache,
    )
    print(f"rank {os.environ.get('RANK', '0')}: finished at step {state.global_step}", flush=True)
    _completed()


def _completed() -> None:
    global _COMPLETED
    _COMPLETED = True


if __name__ == "__main__":
    main()
