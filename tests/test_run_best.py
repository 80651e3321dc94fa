"""The run file's best checkpoint: eval.metric picks it (direction from the name), export.which exports it."""

from __future__ import annotations

import json

import torch
from test_run_config import model_folder, refused, run_file

from distill_core import checkpoint as ckpt
from distill_core.run import prepare_run, train_from_file

QUIET = {"say": lambda line: None}
# evaluate after every step; a large learning rate makes the held-out loss move (and rise after a while)
EVERY_STEP = {"eval_steps": 1}
STEPS = {"num_epochs": None, "num_steps": 5, "learning_rate": 0.3}


def trained_run(tmp_path, **sections):
    model_folder(tmp_path / "teacher", garbage=False, seed=0)
    model_folder(tmp_path / "student", layers=1, garbage=False, seed=1)
    path = run_file(tmp_path, training=EVERY_STEP, optimization=STEPS, **sections)
    return train_from_file(path, **QUIET)


def test_the_best_evaluation_by_loss_is_exported(tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    result = trained_run(tmp_path, eval={"metric": "loss"})
    out = tmp_path / "out"
    best = json.loads((out / "best.json").read_text())
    assert best["mode"] == "min" and 1 <= best["step"] <= 5
    final = AutoModelForCausalLM.from_pretrained(out / "final")
    for name, weight in ckpt.load_student(out / "best.pkl").items():
        torch.testing.assert_close(final.state_dict()[name], weight, rtol=0, atol=0)
    assert abs(result.results["student"]["loss"] - best["metric"]) < 1e-5  # the same held-out examples
    card = (out / "final" / "README.md").read_text()
    assert f"best held-out evaluation by `loss`: step {best['step']}" in card
    assert result.best["step"] == best["step"]


def test_export_which_last_keeps_the_last_step_while_tracking_the_best(tmp_path) -> None:
    result = trained_run(tmp_path, eval={"metric": "perplexity"}, export={"which": "last"})
    best = json.loads((tmp_path / "out" / "best.json").read_text())
    assert best["step"] < 5, "the large learning rate should make a later step worse"
    assert result.results["student"]["perplexity"] > best["metric"]
    assert result.best is None
    assert "weights of the last training step" in (tmp_path / "out" / "final" / "README.md").read_text()


def test_the_direction_comes_from_the_metric_name(tmp_path) -> None:
    model_folder(tmp_path / "teacher")
    model_folder(tmp_path / "student", layers=1)
    for metric, mode in (("perplexity", "min"), ("loss", "min"), ("agreement", "max")):
        prepared = prepare_run(run_file(tmp_path, eval={"metric": metric}))
        assert prepared.checked.config.training.best_metric_mode == mode
    lines: list[str] = []
    train_from_file(run_file(tmp_path, eval={"metric": "loss"}, training=EVERY_STEP), dry_run=True, say=lines.append)
    assert "held out: 3 examples; loss evaluated every 1 steps (lower is better), the best student exported" in lines


def test_metric_mistakes_are_refused_before_weights_load(tmp_path) -> None:
    model_folder(tmp_path / "teacher")
    model_folder(tmp_path / "student", layers=1)
    assert "eval.metric: a causal_lm run evaluates loss, perplexity, agreement, not 'accuracy'" in refused(
        run_file(tmp_path, eval={"metric": "accuracy"})
    )
    assert "export.which: 'best' is the best evaluation by eval.metric" in refused(
        run_file(tmp_path, export={"which": "best"})
    )
    no_held_out = run_file(tmp_path, eval={"metric": "loss"}, data={"eval_fraction": 0.0})
    assert "eval.metric: needs held-out examples" in refused(no_held_out)
    conflict = run_file(tmp_path, eval={"metric": "loss"}, training={"best_metric_mode": "max"})
    assert "training.best_metric_mode: 'max' disagrees with eval.metric 'loss'" in refused(conflict)


def test_a_classifier_keeps_its_best_agreement_with_the_teacher(tmp_path) -> None:
    from test_run_classification import run_file as classification_run
    from test_run_classification import tiny_bert

    tiny_bert(tmp_path / "teacher")
    tiny_bert(tmp_path / "student", layers=1, head=False, seed=1)
    path = classification_run(tmp_path, training=EVERY_STEP, eval={"metric": "agreement"})
    result = train_from_file(path, **QUIET)
    best = json.loads((tmp_path / "out" / "best.json").read_text())
    assert best["mode"] == "max" and result.best["step"] == best["step"]
    assert result.results["agreement"] == best["metric"]
