"""The best checkpoint by ``eval.metric``, and which student ``final/`` holds (``export.which``).

The run adds no bookkeeping of its own: with ``eval.metric`` set it gives ``train()`` a callback that
evaluates the student on the held-out examples and returns that metric, and sets
``training.best_metric_mode`` from the metric's name, so the core's
:class:`~distill_core.evaluation.Evaluator` keeps ``best.pkl`` / ``best.json`` (and early stopping,
``training.early_stopping_patience``, works as in the API). ``export.which: best`` then loads
``best.pkl`` into the student before the final evaluation and the export.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distill_core.run.config import EVAL_METRICS, RunConfig
from distill_core.run.files import Problem

#: the metrics each task's evaluation computes
TASK_METRICS = {
    "causal_lm": ("loss", "perplexity", "agreement"),
    "sequence_classification": ("accuracy", "macro_f1", "agreement"),
}


def export_which(config: RunConfig) -> str:
    """``best`` or ``last``: ``export.which``, else best when ``eval.metric`` is set."""
    if config.export.which is not None:
        return config.export.which
    return "best" if config.eval.metric is not None else "last"


def with_metric_mode(config: RunConfig, task: str, has_held_out: bool, problems: list[Problem]) -> RunConfig:
    """Check ``eval.metric`` and ``export.which``; return the config with ``training.best_metric_mode`` set."""
    metric = config.eval.metric
    if metric is None:
        if config.export.which == "best":
            problems.append(
                Problem("export.which", "'best' is the best evaluation by eval.metric; set eval.metric (e.g. loss)")
            )
        return config
    if metric not in TASK_METRICS[task]:
        problems.append(
            Problem("eval.metric", f"a {task} run evaluates {', '.join(TASK_METRICS[task])}, not {metric!r}")
        )
    if not has_held_out:
        problems.append(
            Problem("eval.metric", "needs held-out examples to evaluate on: set data.eval_file or data.eval_fraction")
        )
    mode = EVAL_METRICS[metric]
    training = config.training
    if "best_metric_mode" in training.model_fields_set and training.best_metric_mode != mode:
        problems.append(
            Problem(
                "training.best_metric_mode",
                f"{training.best_metric_mode!r} disagrees with eval.metric {metric!r}, for which "
                f"{'lower' if mode == 'min' else 'higher'} is better ({mode!r}); leave it out",
            )
        )
        return config
    return config.model_copy(update={"training": training.model_copy(update={"best_metric_mode": mode})})


def metric_value(results: dict[str, Any], metric: str) -> float | None:
    """The student's ``metric`` in an evaluation's results, or None when the evaluation saw nothing."""
    if metric == "agreement":
        value = results.get("agreement", results.get("top1_agreement"))
    else:
        value = results.get("student", {}).get(metric)
    return None if value is None else float(value)


def make_callback(
    evaluate: Callable[[Any, bool], dict[str, Any]], metric: str, *, say: Callable[[str], None]
) -> Callable[..., float | None]:
    """The ``train()`` callback: evaluate the student (with the teacher only for ``agreement``), return ``metric``.

    :param evaluate: ``evaluate(student, with_teacher)`` runs the run's held-out evaluation.
    """

    def callback(model: Any, step: int) -> float | None:
        from distill_core.modules import unwrap

        value = metric_value(evaluate(unwrap(model), metric == "agreement"), metric)
        if value is not None:
            say(f"step {step}: held-out {metric} {value:.4f}")
        return value

    return callback


def restore_best(student: Any, output_dir: str, *, say: Callable[[str], None]) -> dict[str, Any] | None:
    """Load ``best.pkl`` into ``student`` (a peft student: its adapter); return ``best.json``, None if absent."""
    from distill_core import checkpoint as ckpt
    from distill_core.run.export import is_peft_model

    folder = Path(output_dir)
    if not (folder / ckpt.BEST_INFO).is_file():
        say("no evaluation ran during training, so there is no best checkpoint: exporting the last step")
        return None
    info = json.loads((folder / ckpt.BEST_INFO).read_text(encoding="utf-8"))
    weights = ckpt.load_student(folder / ckpt.BEST_STUDENT)
    if is_peft_model(student):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(student, weights)
    else:
        student.load_state_dict(weights)
    say(f"exporting the best student: step {info['step']} (held-out metric {info['metric']:.4f})")
    return info
