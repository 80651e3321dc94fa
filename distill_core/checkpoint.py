"""Checkpoint files: where they live, atomic writes, safe loading, pruning, best and evaluation records.

Layout under ``output_dir``:

- ``gs{step}.pkl``: the student's ``state_dict`` alone, for deployment (TextBrewer's file name); for
  a peft student its adapter and what it belongs to (:mod:`distill_core.student_state`).
- ``checkpoints/step-{step:08d}.pt``: the full state (student, projections, optimizer, scheduler,
  run state, RNG states, configs, versions, plugin state) that ``resume_from`` reads. It is written
  before the callback of its step runs.
- ``checkpoints/step-{step:08d}.eval.json``: what that step's evaluation (the callback's metric)
  changed in the run state: best metric and step, patience, early stop. Reading a full state merges it.
- ``best.pkl`` + ``best.json``: the student at the best metric the callback returned.

These names are the whole of a run's files (:func:`run_files`): a fresh run refuses an ``output_dir``
that holds any of them, or deletes exactly them with ``TrainingConfig.overwrite_output_dir``.

Every file is written through :mod:`distill_core.atomic` (a temporary file in the same folder,
flushed, fsynced, renamed, the folder fsynced), so a crash mid-write never leaves a half-written
file where a good one was. ``save_atomic`` and ``write_text_atomic`` stay importable from here.

Reading checks every file's integrity first: ``torch.save`` writes a zip archive whose entries carry
CRC32s, which ``torch.load`` ignores, so a flipped bit in tensor data would otherwise load silently.
:func:`verify_archive` checks them (one read of the file, at load time only); :func:`load_state`
(resume) and :func:`load_student` (``gs*.pkl``, ``best.pkl``) call it.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import zipfile
import zlib
from pathlib import Path
from typing import Any

import torch

from distill_core.atomic import save_atomic, write_text_atomic
from distill_core.errors import CheckpointError
from distill_core.student_state import PEFT_FORMAT, PEFT_FORMAT_VERSION

FORMAT = "distill-checkpoint"
FORMAT_VERSION = 1
STATE_DIR = "checkpoints"
_STATE_RE = re.compile(r"^step-(\d+)\.pt$")
_STUDENT_RE = re.compile(r"^gs(\d+)\.pkl$")
_EVALUATION_RE = re.compile(r"^step-(\d+)\.eval\.json$")
BEST_STUDENT = "best.pkl"
BEST_INFO = "best.json"
_READ_CHUNK = 1 << 22


def state_path(output_dir: str | os.PathLike[str], step: int) -> Path:
    return Path(output_dir) / STATE_DIR / f"step-{step:08d}.pt"


def student_path(output_dir: str | os.PathLike[str], step: int) -> Path:
    return Path(output_dir) / f"gs{step}.pkl"


def list_states(output_dir: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """Return ``(step, path)`` of every full-state checkpoint under ``output_dir``, oldest first."""
    return _numbered(Path(output_dir) / STATE_DIR, _STATE_RE)


def list_students(output_dir: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """Return ``(step, path)`` of every student-only ``gs{step}.pkl`` under ``output_dir``, oldest first."""
    return _numbered(Path(output_dir), _STUDENT_RE)


def list_evaluations(output_dir: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """Return ``(step, path)`` of every evaluation record ``step-N.eval.json``, oldest first (with or
    without the full state it belongs to)."""
    return _numbered(Path(output_dir) / STATE_DIR, _EVALUATION_RE)


def _numbered(folder: Path, pattern: re.Pattern[str]) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    found = [(pattern.match(entry.name), entry) for entry in folder.iterdir()]
    return sorted((int(matched.group(1)), entry) for matched, entry in found if matched)


def run_files(output_dir: str | os.PathLike[str]) -> list[Path]:
    """Return every checkpoint file a run wrote under ``output_dir``: full states, evaluation records,
    ``gs*.pkl``, ``best.pkl`` and ``best.json``. Anything else there (logs, the user's files) is not a run's."""
    files = [path for listing in (list_states, list_evaluations, list_students) for _, path in listing(output_dir)]
    folder = Path(output_dir)
    return files + [folder / name for name in (BEST_STUDENT, BEST_INFO) if (folder / name).is_file()]


def describe_run(output_dir: str | os.PathLike[str]) -> str | None:
    """Say what checkpoints of a run ``output_dir`` holds (latest step, best), or None when it holds none."""
    parts = []
    states = [step for step, _ in list_states(output_dir)]
    if states:
        parts.append(f"full states of {_count(len(states), 'step')} under {STATE_DIR}/ (the latest: step {states[-1]})")
    else:  # evaluation records are their full states' companions: named only when alone
        evaluations = list_evaluations(output_dir)
        if evaluations:
            parts.append(f"evaluation records of {_count(len(evaluations), 'step')} under {STATE_DIR}/")
    students = [step for step, _ in list_students(output_dir)]
    if students:
        parts.append(f"student files gs*.pkl of {_count(len(students), 'step')} (the latest: step {students[-1]})")
    folder = Path(output_dir)
    best = [name for name in (BEST_STUDENT, BEST_INFO) if (folder / name).is_file()]
    if best:
        try:
            info = json.loads((folder / BEST_INFO).read_text(encoding="utf-8"))
            at = f" (step {info['step']}, metric {info['metric']})"
        except (OSError, ValueError, TypeError, KeyError):
            at = ""
        parts.append(" and ".join(best) + at)
    return "; ".join(parts) if parts else None


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def remove_run(output_dir: str | os.PathLike[str]) -> list[Path]:
    """Delete the run files :func:`run_files` lists (the ``checkpoints`` folder too once empty); return them.

    The full states go first: a removal cut short leaves none that ``resume_from="latest"`` could
    pick, and what is left (student files, best) is still found by the next fresh run's check.
    """
    files = run_files(output_dir)
    for path in files:
        path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        (Path(output_dir) / STATE_DIR).rmdir()  # only when empty: a user's file there stays, with its folder
    return files


def prune(output_dir: str | os.PathLike[str], *, current_step: int, keep_last: int, keep: set[int]) -> None:
    """Delete checkpoints (both kinds) of steps up to ``current_step`` but the newest ``keep_last``.

    Steps in ``keep`` (the best) are never deleted. Files of later steps than ``current_step`` (left
    by a run that was resumed from an earlier checkpoint) are not this run's to judge: they stay
    until the run reaches and overwrites them.
    """
    for listing in (list_states(output_dir), list_students(output_dir)):
        older = [(step, path) for step, path in listing if step <= current_step]
        for step, path in older[:-keep_last]:
            if step not in keep:
                path.unlink(missing_ok=True)
                if path.suffix == ".pt":
                    evaluation_path(path).unlink(missing_ok=True)


def save_best(
    student: torch.nn.Module | dict[str, Any],
    output_dir: str | os.PathLike[str],
    *,
    step: int,
    metric: float,
    mode: str,
) -> None:
    """Write the student's ``state_dict`` (or the given one) as ``best.pkl``, then ``best.json``."""
    folder = Path(output_dir)
    save_atomic(student.state_dict() if isinstance(student, torch.nn.Module) else student, folder / BEST_STUDENT)
    info = {"step": step, "metric": metric, "mode": mode, "file": BEST_STUDENT}
    write_text_atomic(folder / BEST_INFO, json.dumps(info, indent=2) + "\n")


def verify_archive(path: str | os.PathLike[str]) -> None:
    """Check the CRC32 of every entry of the zip archive ``torch.save`` wrote at ``path``.

    ``torch.load`` does not check them, so damage inside tensor data (a flipped bit on disk or in a
    copy) would load as changed weights. Reads the file once, in chunks. A file that is not a zip
    archive (truncated, zeroed, or torch's legacy format) is left to ``torch.load`` to judge.

    :raises CheckpointError: naming the file and its first damaged entry.
    """
    try:
        archive = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist") from None
    except (zipfile.BadZipFile, OSError):
        return
    with archive:
        for entry in archive.infolist():
            try:
                with archive.open(entry) as stream:
                    while stream.read(_READ_CHUNK):
                        pass
            except OSError as exc:  # the disk, not the bytes: as torch.load's own read failures are reported
                raise CheckpointError(f"checkpoint {str(path)!r} cannot be read ({exc})") from exc
            except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
                raise CheckpointError(
                    f"checkpoint {str(path)!r} is corrupt: its entry {entry.filename!r} fails the zip archive's "
                    f"integrity check ({exc}), so its bytes changed after they were written (damage on disk or in "
                    f"a copy); restore the file from a good copy, or use an earlier checkpoint"
                ) from exc


def _load_verified(path: str | os.PathLike[str], map_location: Any) -> Any:
    """``torch.load(weights_only=True)`` of a file whose archive CRCs are checked first."""
    verify_archive(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist") from None
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower():
            raise CheckpointError(
                f"checkpoint {str(path)!r} holds objects other than tensors and plain data, so it is refused "
                f"(distill loads with torch.load(weights_only=True), which runs no code from the file); it was not "
                f"written by distill, or a plugin's on_checkpoint stored an object it should store as plain data"
            ) from None
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt or truncated and cannot be read ({exc})") from exc
    except Exception as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt or truncated and cannot be read ({exc})") from exc


def load_student(path: str | os.PathLike[str], *, map_location: Any = "cpu") -> dict[str, torch.Tensor]:
    """Return the student weights saved in ``path`` (``gs{step}.pkl`` or ``best.pkl``), checked.

    For most students the file is the ``state_dict`` (``student.load_state_dict(load_student(path))``);
    this is then the same as ``torch.load(path, weights_only=True)``, but a damaged file is an error
    (:func:`verify_archive`) instead of silently changed weights. For a peft student it is the
    adapter in peft's format, which ``set_peft_model_state_dict(model, load_student(path))`` loads;
    :func:`load_peft_student` gives what it belongs to as well.

    :raises CheckpointError: the file is missing, damaged, or not a student file.
    """
    state = _load_verified(path, map_location)
    if isinstance(state, dict) and state.get("format") == FORMAT:
        raise CheckpointError(
            f"{str(path)!r} is a full-state checkpoint, not a student file; use load_state(path)['student'] or "
            f"the gs{state.get('step')}.pkl file beside {STATE_DIR}/"
        )
    if not isinstance(state, dict):
        raise CheckpointError(f"{str(path)!r} is not a student file (a state_dict) written by distill")
    if state.get("format") == PEFT_FORMAT:
        return state["state_dict"]
    return state


def load_peft_student(path: str | os.PathLike[str], *, map_location: Any = "cpu") -> dict[str, Any]:
    """Return a peft student's ``gs{step}.pkl`` or ``best.pkl``, checked: its adapter and what it belongs to.

    Keys: ``state_dict`` (the adapter in peft's format, for ``set_peft_model_state_dict``),
    ``adapter_name``, ``peft_type`` (e.g. ``"LORA"``), ``peft_config`` (the adapter's config as a
    dict, what peft's ``adapter_config.json`` holds), ``base_model_class``, ``format`` and
    ``format_version``.

    :raises CheckpointError: the file is missing, damaged, or not a peft student's file.
    """
    return _load_format(
        path,
        map_location,
        (PEFT_FORMAT, PEFT_FORMAT_VERSION, "peft student format"),
        "is not a peft student's file (a whole student's state_dict, or not a student file): load it with "
        "load_student(path)",
    )


def _load_format(
    path: str | os.PathLike[str], map_location: Any, expected: tuple[str, int, str], not_it: str
) -> dict[str, Any]:
    """Load a verified file that must be a dict of format ``expected`` = (name, newest version read, label)."""
    name, newest, label = expected
    state = _load_verified(path, map_location)
    if not isinstance(state, dict) or state.get("format") != name:
        raise CheckpointError(f"{str(path)!r} {not_it}")
    if state.get("format_version", 0) > newest:
        raise CheckpointError(
            f"{str(path)!r} has {label} version {state['format_version']}, newer than this distill reads "
            f"({newest}); upgrade distill"
        )
    return state


def load_state(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Load a full-state checkpoint safely (``weights_only=True``: no code runs from the file).

    The archive's CRCs are checked first (:func:`verify_archive`), so a damaged file is refused.
    """
    state = _load_format(
        path,
        map_location,
        (FORMAT, FORMAT_VERSION, "checkpoint format"),
        f"is not a distill full-state checkpoint (a student-only gs*.pkl file cannot be resumed from; use a file "
        f"under {STATE_DIR}/)",
    )
    evaluation = read_evaluation(path)
    if evaluation is not None:
        state["run_state"] = {**state["run_state"], **evaluation}
    return state


#: the run-state fields an evaluation changes (written beside the full state of its step)
EVALUATION_FIELDS = ("best_metric", "best_step", "evals_without_improvement", "stopped_early", "pending_evaluation")


def evaluation_path(state_file: str | os.PathLike[str]) -> Path:
    """Where the evaluation record of the full state ``state_file`` lives."""
    path = Path(state_file)
    return path.with_name(path.stem + ".eval.json")


def write_evaluation(state_file: str | os.PathLike[str], run_state: dict[str, Any]) -> None:
    """Record (atomically) what the evaluation at the step of ``state_file`` changed in the run state."""
    record = {key: run_state[key] for key in EVALUATION_FIELDS}
    write_text_atomic(evaluation_path(state_file), json.dumps(record, indent=2) + "\n")


def read_evaluation(state_file: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The evaluation record of ``state_file``, or None when its evaluation never finished (or none ran)."""
    path = evaluation_path(state_file)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"evaluation record {str(path)!r} is unreadable ({exc}); delete it to re-evaluate"
        ) from exc
    if not isinstance(record, dict) or set(record) != set(EVALUATION_FIELDS):
        raise CheckpointError(f"evaluation record {str(path)!r} is not one distill wrote; delete it to re-evaluate")
    return record
