"""Everything about a run that can be checked without loading weights, all at once (DESIGN §11).

:func:`check_run` reads the run's sections, the models' ``config.json``, the tokenizer's files and
the data files, and raises :class:`~distill_core.run.files.RunFileError` listing every problem with
its field path. What it read (:class:`CheckedRun`) is what training then uses, so nothing is read
twice and nothing checked differs from what runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from distill_core.run.classification import label_names, named_labels, num_labels_of, task_of
from distill_core.run.best import with_metric_mode
from distill_core.run.config import RunConfig
from distill_core.run.data import DataFileError, columns_of, read_records, split_held_out
from distill_core.run.files import Problem, RunFileError, problems_of
from distill_core.run.sources import hub_snapshot, resolve
from distill_core.run.student_init import planned_student_config

#: how many leading examples must hold the format's columns
COLUMN_CHECK_ROWS = 5
#: the data section's fields that hold paths
DATA_PATHS = ("train_file", "eval_file", "tokenizer")
#: the fields that name a model (or tokenizer) folder, which may also be a Hub id in the local cache
MODEL_PATHS = ("path", "tokenizer")
#: the files that make a folder hold a tokenizer
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


@dataclass
class CheckedRun:
    """A run that passed the checks, and what the checks read."""

    config: RunConfig
    teacher_config: dict[str, Any] = field(default_factory=dict)  # {} for a GGUF teacher (read at load)
    student_config: dict[str, Any] = field(default_factory=dict)
    tokenizer_path: str = ""
    train_records: list[dict[str, Any]] = field(default_factory=list)
    eval_records: list[dict[str, Any]] = field(default_factory=list)
    task: str = "causal_lm"  # or "sequence_classification"
    label_names: list[str] = field(default_factory=list)  # sequence classification: the class names, by id

    @property
    def classifies(self) -> bool:
        """Whether the models are sequence classifiers (one class per text)."""
        return self.task == "sequence_classification"


def _model_config(path: str, gguf_file: str | None, where: str, problems: list[Problem]) -> dict[str, Any]:
    if any(problem.path == f"{where}.path" for problem in problems):
        return {}  # already reported (a name that resolves to nothing)
    folder = Path(path)
    if not folder.is_dir():
        problems.append(Problem(f"{where}.path", f"{path}: no such folder"))
        return {}
    if gguf_file is not None:
        if not (folder / gguf_file).is_file():
            problems.append(Problem(f"{where}.gguf_file", f"{gguf_file}: no such file in {path}"))
        return {}
    try:
        settings = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        problems.append(Problem(f"{where}.path", f"{path} holds no config.json; save the model with save_pretrained"))
        return {}
    except (OSError, ValueError) as exc:
        problems.append(Problem(f"{where}.path", f"{path}/config.json cannot be read ({exc})"))
        return {}
    return settings if isinstance(settings, dict) else {}


def _tokenizer_path(config: RunConfig, problems: list[Problem]) -> str:
    if config.data.tokenizer is not None:
        reported = any(problem.path == "data.tokenizer" for problem in problems)
        if not reported and not any((Path(config.data.tokenizer) / name).is_file() for name in TOKENIZER_FILES):
            problems.append(
                Problem("data.tokenizer", f"{config.data.tokenizer} holds no tokenizer.json or tokenizer_config.json")
            )
        return config.data.tokenizer
    for folder in (path for path in (config.student.path, config.teacher.path) if path is not None):
        if any((Path(folder) / name).is_file() for name in TOKENIZER_FILES):
            return folder
    if config.teacher.gguf_file is not None:
        return config.teacher.path  # transformers reads the tokenizer from the GGUF file
    problems.append(
        Problem(
            "data.tokenizer", "neither the student's nor the teacher's folder holds a tokenizer; name its folder here"
        )
    )
    return ""


def has_chat_template(folder: str) -> bool:
    """Whether the tokenizer in ``folder`` has a chat template (in tokenizer_config.json or a .jinja file)."""
    path = Path(folder)
    if (path / "chat_template.jinja").is_file() or (path / "chat_template.json").is_file():
        return True
    try:
        settings = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(isinstance(settings, dict) and settings.get("chat_template"))


def _records(config: RunConfig, field_name: str, problems: list[Problem]) -> list[dict[str, Any]]:
    path = getattr(config.data, field_name)
    try:
        records = read_records(path, text_column=config.data.text_column)
    except DataFileError as exc:
        problems.append(Problem(f"data.{field_name}", str(exc)))
        return []
    for column_field, column in columns_of(config.data).items():
        missing = [number for number, record in enumerate(records[:COLUMN_CHECK_ROWS], start=1) if column not in record]
        if missing:
            present = sorted({key for record in records[:COLUMN_CHECK_ROWS] for key in record})
            problems.append(
                Problem(
                    f"data.{column_field}",
                    f"column {column!r} is missing from example(s) {missing} of {path} (format "
                    f"{config.data.format!r}); its columns are {present}",
                )
            )
    return records


def _check_matches(checked: CheckedRun, problems: list[Problem]) -> None:
    """Layer indices against ``num_hidden_layers``, widths against ``hidden_size`` (from config.json)."""
    sizes = {"T": checked.teacher_config, "S": checked.student_config}
    for number, match in enumerate(checked.config.distillation.intermediate_matches):
        where = f"distillation.intermediate_matches.{number}"
        for role, model_settings in sizes.items():
            layers = model_settings.get("num_hidden_layers")
            if not isinstance(layers, int):
                continue
            # hidden states: the embeddings then one per layer; attention maps: one per layer
            count = layers + 1 if match.feature == "hidden" else layers
            indices = getattr(match, f"layer_{role}")
            beyond = [index for index in (indices if isinstance(indices, list) else [indices]) if index >= count]
            if beyond:
                model = "teacher" if role == "T" else "student"
                problems.append(
                    Problem(
                        f"{where}.layer_{role}",
                        f"layer {beyond[0]} is beyond the {model}, whose {match.feature!r} feature has {count} entries "
                        f"(indices 0..{count - 1}; num_hidden_layers={layers} in its config.json)",
                    )
                )
        width_T, width_S = checked.teacher_config.get("hidden_size"), checked.student_config.get("hidden_size")
        if match.feature != "hidden" or not (isinstance(width_T, int) and isinstance(width_S, int)):
            continue
        if match.proj is None and width_T != width_S:
            problems.append(
                Problem(
                    f"{where}.proj",
                    f"the student's hidden states are {width_S} wide and the teacher's {width_T}: "
                    f"add a projection, e.g. proj: [linear, {width_S}, {width_T}]",
                )
            )
        elif match.proj is not None and (match.proj.dim_in, match.proj.dim_out) != (width_S, width_T):
            problems.append(
                Problem(
                    f"{where}.proj",
                    f"projects {match.proj.dim_in} -> {match.proj.dim_out}, but the student's "
                    f"hidden states are {width_S} wide and the teacher's {width_T}",
                )
            )


def _check_vocabularies(checked: CheckedRun, problems: list[Problem]) -> None:
    vocab_T, vocab_S = checked.teacher_config.get("vocab_size"), checked.student_config.get("vocab_size")
    if not (isinstance(vocab_T, int) and isinstance(vocab_S, int)):
        return
    kd_vocab = checked.config.distillation.kd_vocab_size
    if kd_vocab is None and vocab_T != vocab_S:
        problems.append(
            Problem(
                "distillation.kd_vocab_size",
                f"the teacher's vocabulary has {vocab_T} entries and the student's "
                f"{vocab_S} (vocab_size in config.json); if one is padded, set kd_vocab_size to the real size",
            )
        )
    elif kd_vocab is not None and kd_vocab > min(vocab_T, vocab_S):
        problems.append(
            Problem(
                "distillation.kd_vocab_size",
                f"{kd_vocab} is more than the smaller vocabulary "
                f"({min(vocab_T, vocab_S)}; teacher {vocab_T}, student {vocab_S})",
            )
        )


def _task_mismatch(checked: CheckedRun) -> str:
    architectures = checked.teacher_config.get("architectures") or "none"
    if checked.classifies:
        return (
            f"a sequence-classification run reads `text_label` examples (a text and its class), not "
            f"{checked.config.data.format!r}"
        )
    return (
        f"`text_label` examples are for sequence classification, and this run's task is causal_lm (the teacher's "
        f"architectures: {architectures}); use a *ForSequenceClassification teacher or set task: "
        f"sequence_classification"
    )


def _is_classifier(model_config: dict[str, Any]) -> bool:
    return any(str(name).endswith("ForSequenceClassification") for name in model_config.get("architectures") or [])


def _check_labels(checked: CheckedRun, problems: list[Problem]) -> None:
    """The data's labels against the teacher's classes, and the student's when it has a head already."""
    data = checked.config.data
    records = checked.train_records + checked.eval_records
    checked.label_names = label_names(records, data.label_column, checked.teacher_config)
    found = sorted({str(record[data.label_column]) for record in records if data.label_column in record})
    teacher_names = named_labels(checked.teacher_config)
    if teacher_names is not None and set(found) - set(teacher_names):
        unknown = sorted(set(found) - set(teacher_names))
        problems.append(
            Problem(
                "data.label_column",
                f"label(s) {unknown} are not among the teacher's classes {teacher_names} (id2label in its config.json)",
            )
        )
    if checked.teacher_config and not _is_classifier(checked.teacher_config):
        architectures = checked.teacher_config.get("architectures") or "none"
        problems.append(
            Problem(
                "teacher.path",
                f"the teacher has no classification head of its own (architectures: {architectures}): a "
                f"teacher must already be trained on the labels; fine-tune it first",
            )
        )
    for role, model_config in (("teacher", checked.teacher_config), ("student", checked.student_config)):
        declared = num_labels_of(model_config) if _is_classifier(model_config) else None
        if declared is not None and declared != len(checked.label_names):
            problems.append(
                Problem(
                    f"{role}.path",
                    f"the {role} classifies into {declared} classes (num_labels in its config.json), and the "
                    f"data's labels are {len(checked.label_names)}: {checked.label_names}",
                )
            )
    if len(checked.label_names) < 2:
        problems.append(
            Problem("data.label_column", f"a classifier needs at least 2 labels; the data has {checked.label_names}")
        )


def _resolved(config: RunConfig, problems: list[Problem]) -> RunConfig:
    """The config with its ``package:`` and ``cache:`` names, and Hub ids of models, turned into paths.

    docs/run-config.md#recipes; a Hub id (``org/name``) resolves through the local Hugging Face cache.
    """
    sections = {}
    for section, names in (("teacher", ("path",)), ("student", ("path",)), ("data", DATA_PATHS)):
        model = getattr(config, section)
        update = {}
        for name in names:
            if getattr(model, name) is None:
                continue
            where = f"{section}.{name}"
            update[name] = resolve(getattr(model, name), where, problems)
            if name in MODEL_PATHS:
                update[name] = hub_snapshot(update[name], where, problems)
        sections[section] = model.model_copy(update=update)
    return config.model_copy(update=sections)


def check_run(data: dict[str, Any], *, source: str = "run file") -> CheckedRun:
    """Validate a run file's object and everything it names, without loading weights.

    :raises RunFileError: with every problem found, each at its field path.
    """
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as exc:
        # the sections cross-reference each other, so the file checks wait for a valid config
        raise RunFileError(source, problems_of(exc)) from None
    problems: list[Problem] = []
    config = _resolved(config, problems)
    checked = CheckedRun(config=config)
    checked.teacher_config = _model_config(config.teacher.path, config.teacher.gguf_file, "teacher", problems)
    if config.student.from_teacher is not None:  # the student's config.json as it will be cut
        checked.student_config = planned_student_config(config.student.from_teacher, checked.teacher_config, problems)
    else:
        checked.student_config = _model_config(config.student.path, None, "student", problems)
    checked.tokenizer_path = _tokenizer_path(config, problems)
    checked.task = task_of(config.task, checked.teacher_config)
    if checked.classifies != (config.data.format == "text_label"):
        problems.append(Problem("data.format", _task_mismatch(checked)))
    if config.data.format == "messages" and checked.tokenizer_path and config.teacher.gguf_file is None:
        if not has_chat_template(checked.tokenizer_path):
            problems.append(
                Problem(
                    "data.format",
                    f"'messages' renders chats with the tokenizer's chat template, and the tokenizer "
                    f"in {checked.tokenizer_path} has none; use a chat model's tokenizer (data.tokenizer) or "
                    f"format 'prompt_completion'",
                )
            )
    checked.train_records = _records(config, "train_file", problems)
    if config.data.eval_file is not None:
        checked.eval_records = _records(config, "eval_file", problems)
    elif checked.train_records:
        try:
            checked.train_records, checked.eval_records = split_held_out(
                checked.train_records, config.data.eval_fraction, seed=config.optimization.seed
            )
        except DataFileError as exc:
            problems.append(Problem("data.eval_fraction", str(exc)))
    _check_matches(checked, problems)
    if checked.classifies:
        _check_labels(checked, problems)
    else:
        _check_vocabularies(checked, problems)
    checked.config = with_metric_mode(checked.config, checked.task, bool(checked.eval_records), problems)
    if problems:
        raise RunFileError(source, problems)
    return checked
