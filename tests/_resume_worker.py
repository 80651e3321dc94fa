"""A small distillation run for the resume tests, usable in-process and as a script.

Tiny BERT teacher and student with dropout on, a hidden-state match through a linear projection,
a shuffled DataLoader (RandomSampler, no explicit generator), gradient accumulation 2 with a partial
accumulation at each epoch's end (9 batches -> 5 steps per epoch), an LR schedule, gradient
clipping, a checkpoint every 2 steps and a callback that returns a metric.

As a script::

    python tests/_resume_worker.py OUTPUT_DIR [--resume] [--block-at STEP --marker FILE]
        [--teacher-cache DIR [--batch-delay SECONDS]]

``--block-at`` makes the callback of that checkpoint write ``--marker`` and then sleep, so the
parent can kill the process at a known point (every earlier checkpoint is complete on disk).
``--teacher-cache`` stores the teacher's outputs in DIR (tests/test_teacher_cache.py kills such a
run while it builds the cache; ``--batch-delay`` slows each batch so the kill lands mid-epoch).
"""

from __future__ import annotations

import argparse
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

from distill_core import DistillationConfig, TrainingConfig  # noqa: E402

VOCAB, LENGTH, CLASSES = 100, 12, 3
EXAMPLES, BATCH_SIZE = 36, 4  # 9 batches per epoch
ACCUMULATION, EPOCHS, CKPT_STEPS = 2, 2, 2
TOTAL_STEPS = EPOCHS * 5
MATCH = {
    "layer_T": 3,
    "layer_S": 2,
    "feature": "hidden",
    "loss": "hidden_mse",
    "weight": 1,
    "proj": ["linear", 16, 32, {"lr": 3e-3}],
}


def tiny_bert(hidden: int, layers: int, heads: int, seed: int) -> torch.nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=hidden * 2,
        max_position_embeddings=LENGTH * 2,
        num_labels=CLASSES,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        attn_implementation="eager",
    )
    return BertForSequenceClassification(config)


def dataset() -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(7)
    input_ids = torch.randint(1, VOCAB, (EXAMPLES, LENGTH), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[::3, LENGTH - 4 :] = 0
    labels = torch.randint(0, CLASSES, (EXAMPLES,), generator=generator)
    return [
        {"input_ids": input_ids[i] * attention_mask[i], "attention_mask": attention_mask[i], "labels": labels[i]}
        for i in range(EXAMPLES)
    ]


def two_task_run() -> tuple[dict[str, torch.nn.Module], torch.nn.Module, dict[str, Any]]:
    """Teachers, student and shuffled loaders of a two-task run ("a", "b"), for multi-task tests."""
    teachers = {"a": tiny_bert(32, 3, 2, seed=2), "b": tiny_bert(32, 3, 2, seed=3)}
    data = dataset()
    loaders = {
        "a": torch.utils.data.DataLoader(data[:24], batch_size=4, shuffle=True),
        "b": torch.utils.data.DataLoader(data[24:], batch_size=4, shuffle=True),
    }
    return teachers, tiny_bert(16, 2, 2, seed=1), loaders


def adaptor(batch: dict[str, torch.Tensor], outputs: Any) -> dict[str, Any]:
    return {
        "logits": outputs.logits,
        "hidden": outputs.hidden_states,
        "inputs_mask": batch["attention_mask"],
        "losses": [outputs.loss],
    }


def build(
    output_dir: str | Path,
    *,
    student_hidden: int = 16,
    match: dict[str, Any] | None = None,
    teacher_cache: Any = None,
    **training: Any,
) -> tuple[Any, torch.optim.Optimizer, torch.utils.data.DataLoader]:
    """The distiller, the student's optimizer and the shuffled loader, the same in every process."""
    from distill_core import Distillation

    options = {
        "output_dir": str(output_dir),
        "device": "cpu",
        "progress_bar": False,
        "log_steps": 1,
        "gradient_accumulation_steps": ACCUMULATION,
        "ckpt_steps": CKPT_STEPS,
        **training,
    }
    match = dict(MATCH, proj=["linear", student_hidden, 32, {"lr": 3e-3}]) if match is None else match
    distill_config = DistillationConfig(
        temperature=4, hard_label_weight=0.5, intermediate_matches=[match], teacher_cache=teacher_cache
    )
    teacher = tiny_bert(32, 3, 2, seed=0)
    student = tiny_bert(student_hidden, 2, 2, seed=1)
    distiller = Distillation(TrainingConfig(**options), distill_config, teacher, student, adaptor, adaptor)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(dataset(), batch_size=BATCH_SIZE, shuffle=True)
    return distiller, optimizer, loader


def evaluate(model: torch.nn.Module) -> float:
    """A deterministic metric of the student (eval mode, fixed inputs): the mean top logit."""
    inputs = torch.arange(2 * LENGTH).reshape(2, LENGTH) % VOCAB
    with torch.no_grad():
        return float(model(input_ids=inputs).logits.max(dim=-1).values.mean())


def run(
    output_dir: str | Path,
    *,
    resume_from: str | None = None,
    block_at: int | None = None,
    marker: str | Path | None = None,
    batch_delay: float = 0.0,
    **training: Any,
) -> Any:
    """Train (or resume) the run in ``output_dir``; returns the final RunState."""
    distiller, optimizer, loader = build(output_dir, **training)

    def slow(batch: Any) -> Any:
        time.sleep(batch_delay)
        return batch

    def callback(model: torch.nn.Module, step: int) -> float:
        print(f"callback at step {step}", flush=True)
        if step == block_at:
            Path(marker).write_text(str(step))
            time.sleep(600)  # the parent kills us here
        torch.rand(3), random.random()  # randomness in a callback must not change the run's
        return evaluate(model)

    random.seed(11)
    numpy.random.seed(13)  # unused by the run, but captured with the other RNG states
    torch.manual_seed(1234)  # the run's randomness: shuffling and dropout draw from here
    with distiller:
        return distiller.train(
            optimizer,
            lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / 20),
            loader,
            num_epochs=EPOCHS,
            callback=callback,
            max_grad_norm=1.0,
            resume_from=resume_from,
            batch_postprocessor=slow if batch_delay else None,
            output_hidden_states=True,
        )


def refused_training(distiller: Any, optimizer: torch.optim.Optimizer, loader: Any) -> Exception:
    """Call ``train``, which must be refused before it trains; return the error.

    Refused before training means: the callback never ran, the optimizer has no state and the
    student's weights are unchanged.
    """
    before = {key: value.clone() for key, value in distiller.student.state_dict().items()}
    calls: list[int] = []
    try:
        distiller.train(
            optimizer,
            None,
            loader,
            num_steps=2,
            callback=lambda model, step: calls.append(step),
            output_hidden_states=True,
        )
    except Exception as error:  # noqa: BLE001 - the caller checks which error it was
        assert calls == [] and not optimizer.state
        assert all(torch.equal(before[key], value) for key, value in distiller.student.state_dict().items())
        return error
    raise AssertionError("train() ran; it should have been refused before training")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--block-at", type=int)
    parser.add_argument("--marker")
    parser.add_argument("--teacher-cache")
    parser.add_argument("--batch-delay", type=float, default=0.0)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in tests/test_checkpoint.py: same numerics, no contention on a busy machine
    state = run(
        args.output_dir,
        resume_from="latest" if args.resume else None,
        block_at=args.block_at,
        marker=args.marker,
        batch_delay=args.batch_delay,
        teacher_cache=args.teacher_cache,
    )
    print(f"finished at step {state.global_step}")


if __name__ == "__main__":
    main()
