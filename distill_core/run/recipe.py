"""The run file's recipe, top to bottom: check, tokenise, plan, load, distil, evaluate, export.

Built on the core API (DESIGN §11): the models go to :class:`~distill_core.Distillation` with the
automatic causal-LM adaptors, the batches come from a plain DataLoader, and ``train()`` runs the
one training loop. Nothing here trains in a way the API cannot.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill_core.run.checks import CheckedRun, check_run
from distill_core.run.classification import build_classification_examples
from distill_core.run.data import DataFileError, build_examples, make_loader, pad_id_of
from distill_core.run.files import Problem, RunFileError, apply_overrides, read_run_file
from distill_core.run.plan import Plan, make_plan

Say = Callable[[str], None]


@dataclass
class RunResult:
    """What a run produced (the student is None after a dry run)."""

    checked: CheckedRun
    plan: Plan
    student: Any = None
    results: dict[str, Any] = field(default_factory=dict)
    export_dir: Path | None = None
    #: a student cut from the teacher (student.from_teacher): the plan, sizes and scores (importance.json)
    built: dict[str, Any] | None = None
    #: export.which best: best.json of the student exported (step, metric, mode); None: the last step's
    best: dict[str, Any] | None = None


@dataclass
class PreparedRun:
    """A checked run with its tokenizer and tokenised examples: everything but the weights."""

    checked: CheckedRun
    tokenizer: Any
    train_examples: list[dict[str, list[int]]]
    eval_examples: list[dict[str, list[int]]]
    plan: Plan


def load_tokenizer(checked: CheckedRun) -> Any:
    from transformers import AutoTokenizer

    teacher = checked.config.teacher
    gguf = teacher.gguf_file if checked.tokenizer_path == teacher.path else None
    return AutoTokenizer.from_pretrained(checked.tokenizer_path, **({"gguf_file": gguf} if gguf else {}))


def prepare_run(path: str | os.PathLike[str], *, overrides: Sequence[str] = ()) -> PreparedRun:
    """Read, check and tokenise a run file; load no weights. Raises RunFileError listing every problem."""
    source = os.fspath(path)
    data = read_run_file(path)
    try:
        data = apply_overrides(data, overrides)
    except ValueError as exc:
        raise RunFileError(source, [Problem("(overrides)", str(exc))]) from None
    checked = check_run(data, source=source)
    tokenizer = load_tokenizer(checked)
    examples: dict[str, list[dict[str, list[int]]]] = {}
    problems = []
    for name, records in (("train_file", checked.train_records), ("eval_file", checked.eval_records)):
        try:
            if checked.classifies:
                examples[name] = build_classification_examples(
                    tokenizer, records, checked.config.data, checked.label_names
                )
            else:
                examples[name] = build_examples(tokenizer, records, checked.config.data)
        except (DataFileError, ValueError) as exc:
            problems.append(Problem("data.format", f"{name}: {exc}"))
    if not problems and not examples["train_file"]:
        problems.append(Problem("data.train_file", "no example has a token to learn (all cut by max_length?)"))
    if problems:
        raise RunFileError(source, problems)
    plan = make_plan(checked, examples["train_file"], len(examples["eval_file"]))
    return PreparedRun(checked, tokenizer, examples["train_file"], examples["eval_file"], plan)


def _schedule(warmup_fraction: float) -> Callable[..., Any]:
    """Linear warm-up, then linear decay to 0, over the steps distill counts (this rank's share of the data)."""
    import torch

    def build(optimizer: Any, num_training_steps: int) -> Any:
        warmup = max(1, math.ceil(warmup_fraction * num_training_steps)) if warmup_fraction > 0 else 0

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return max(0.0, (num_training_steps - step) / max(1, num_training_steps - warmup))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    return build


def run_prepared(prepared: PreparedRun, *, resume: bool = False, say: Say = print) -> RunResult:
    """Load the models, distil, evaluate and export a prepared run.

    :param resume: continue from the newest full-state checkpoint in ``training.output_dir``.

    Under torchrun every rank trains its share of the data; rank 0 alone evaluates and exports while
    the others wait at a barrier, so the files are written once.
    """
    import torch

    from distill_core import Distillation
    from distill_core.run.best import export_which, make_callback, restore_best
    from distill_core.run.models import load_models

    checked, config = prepared.checked, prepared.checked.config
    optimization = config.optimization
    torch.manual_seed(optimization.seed)
    if config.student.from_teacher is None:
        say("loading the teacher and the student")
        teacher, student = load_models(checked)
        built = None
    else:
        teacher, student, built = _student_from_teacher(prepared, resume=resume, say=say)
    pad_id = pad_id_of(prepared.tokenizer)
    loader = make_loader(
        prepared.train_examples,
        batch_size=optimization.batch_size,
        pad_id=pad_id,
        shuffle=True,
        seed=optimization.seed,
        classify=checked.classifies,
    )
    distiller = Distillation(
        config.training,
        config.distillation,
        teacher,
        student,
        adaptor_T=None,
        adaptor_S=None,
        tokenizer_T=prepared.tokenizer,
        tokenizer_S=prepared.tokenizer,
    )
    trainable = [parameter for parameter in student.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=optimization.learning_rate, weight_decay=optimization.weight_decay)
    model_args = (
        {"output_attentions": True}
        if any(match.feature == "attention" for match in config.distillation.intermediate_matches)
        else {}
    )
    callback = None
    if config.eval.metric is not None:
        callback = make_callback(
            lambda model, with_teacher: held_out_results(prepared, model, teacher if with_teacher else None),
            config.eval.metric,
            say=say,
        )
    with distiller:
        distiller.train(
            optimizer,
            _schedule(optimization.warmup_fraction),
            loader,
            callback=callback,
            num_epochs=None if optimization.num_steps else (optimization.num_epochs or 1),
            num_steps=optimization.num_steps,
            max_grad_norm=optimization.max_grad_norm,
            resume_from="latest" if resume else None,
            **model_args,
        )
    runtime = distiller.runtime
    result = RunResult(checked=checked, plan=prepared.plan, student=student, built=built)
    if runtime.is_main:
        if export_which(config) == "best":
            result.best = restore_best(student, config.training.output_dir, say=say)
        result = _evaluate_and_export(prepared, result, teacher, say=say)
    runtime.barrier()  # the other ranks end once the files are written
    return result


def _device_of(config: Any) -> Any:
    """The device the run trains on, as the runtime picks it (training.device, else this rank's GPU, else CPU)."""
    import torch

    if config.training.device is not None:
        return torch.device(config.training.device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _student_from_teacher(prepared: PreparedRun, *, resume: bool, say: Say) -> tuple[Any, Any, dict[str, Any]]:
    """Load the teacher and cut the student from it (``student.from_teacher``); LoRA-wrap it if asked.

    The student as built is written to ``output_dir/student_init/`` (rank 0); a resumed run reads it
    back from there rather than calibrating again.
    """
    from distill_core.run.models import load_student, load_teacher, with_lora
    from distill_core.run.student_init import STUDENT_INIT, save_student_init, student_from_teacher

    checked, config = prepared.checked, prepared.checked.config
    section = config.student.from_teacher
    assert section is not None
    folder = Path(config.training.output_dir) / STUDENT_INIT
    say("loading the teacher")
    teacher = load_teacher(checked)
    if resume and (folder / "importance.json").is_file():
        say(f"reading the student cut from the teacher in {folder}")
        student = load_student(checked, str(folder))
        built = json.loads((folder / "importance.json").read_text(encoding="utf-8"))
    else:
        pad_id = pad_id_of(prepared.tokenizer)

        def batches(examples: list[dict[str, Any]]) -> Any:
            size = config.optimization.batch_size
            return make_loader(examples, batch_size=size, pad_id=pad_id, shuffle=False, classify=checked.classifies)

        try:
            student, built = student_from_teacher(
                teacher,
                section,
                prepared.train_examples,
                teacher_name=config.teacher.path,
                make_batches=batches,
                device=_device_of(config),
                say=say,
            )
        except ValueError as exc:  # what the checks could not see (a GGUF teacher has no config.json to read)
            raise RunFileError(config.teacher.path, [Problem("student.from_teacher", str(exc))]) from None
        if _is_main_process():
            save_student_init(student, prepared.tokenizer, built, folder)
            say(f"wrote the student as built to {folder}")
    if config.student.lora is not None:
        student = with_lora(student, checked)
    return teacher, student, built


def held_out_results(prepared: PreparedRun, student: Any, teacher: Any | None) -> dict[str, Any]:
    """Evaluate ``student`` (and ``teacher``, unless None) on the run's held-out examples (``eval`` section)."""
    from distill_core.run.classification import evaluate_classification
    from distill_core.run.evaluate import evaluate_held_out

    config, classifies = prepared.checked.config, prepared.checked.classifies
    examples = prepared.eval_examples[: config.eval.max_examples]
    pad_id = pad_id_of(prepared.tokenizer)
    size = config.eval.batch_size
    batches = make_loader(examples, batch_size=size, pad_id=pad_id, shuffle=False, classify=classifies)
    device = next(student.parameters()).device
    if teacher is not None:
        teacher = teacher.to(device)
    if classifies:
        names = prepared.checked.label_names
        return evaluate_classification(student, teacher, batches, label_names=names, device=device)
    vocabularies = [model.config.vocab_size for model in (student, teacher) if model is not None]
    vocab = config.distillation.kd_vocab_size or min(vocabularies)
    return evaluate_held_out(student, teacher, batches, vocab=vocab, device=device)


def _evaluate_and_export(prepared: PreparedRun, result: RunResult, teacher: Any, *, say: Say) -> RunResult:
    """Evaluate the trained student on the held-out examples and export it (rank 0 only)."""
    from distill_core import __version__
    from distill_core.run.classification import format_classification
    from distill_core.run.evaluate import format_results
    from distill_core.run.export import export_student, sha256_of

    config, student = prepared.checked.config, result.student
    results: dict[str, Any] = {}
    if prepared.eval_examples:
        results = held_out_results(prepared, student, teacher)
        say(format_classification(results) if prepared.checked.classifies else format_results(results))
    output_dir = Path(config.training.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "eval_results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    data_files = [config.data.train_file] + ([config.data.eval_file] if config.data.eval_file else [])
    export_dir, exported = export_student(
        student,
        prepared.tokenizer,
        output_dir / config.export.folder,
        run=config.model_dump(mode="json"),
        results=results,
        fingerprint=sha256_of(data_files),
        version=__version__,
        merge_lora=config.export.merge_lora,
        built=result.built,
        best=result.best and {**result.best, "name": config.eval.metric},
    )
    say(f"exported the student to {export_dir}")
    result.student, result.results, result.export_dir = exported, results, export_dir
    return result


def train_from_file(
    path: str | os.PathLike[str],
    *,
    overrides: Sequence[str] = (),
    dry_run: bool = False,
    resume: bool = False,
    say: Say = print,
) -> RunResult:
    """Run the distillation a run file describes (``distill train RUN.yaml``).

    :param overrides: ``section.field=value`` settings applied over the file's.
    :param dry_run: stop after the checks and print the plan; no weights are loaded.
    :param resume: continue from the newest full-state checkpoint in ``training.output_dir``
        (``resume_from="latest"``); with none there, start from the beginning.
    :raises RunFileError: before any weights load, listing every problem found with its field path.
    """
    if not _is_main_process():
        say = _quiet  # under torchrun, rank 0 speaks for all
    prepared = prepare_run(path, overrides=overrides)
    for line in prepared.plan.lines(prepared.checked):
        say(line)
    if dry_run:
        return RunResult(checked=prepared.checked, plan=prepared.plan)
    return run_prepared(prepared, resume=resume, say=say)


def _is_main_process() -> bool:
    """Whether this process is rank 0 of a torchrun launch, or not launched by torchrun at all."""
    return os.environ.get("RANK", "0") == "0"


def _quiet(line: str) -> None:
    """Say nothing."""
