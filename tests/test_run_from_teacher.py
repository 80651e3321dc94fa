"""The run file's `student.from_teacher`: a student cut from the teacher, checked, trained and exported."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from test_run_config import make_tokenizer, model_folder, refused, run_file
from tiny_lm import tiny_llama

from distill_core.run import prepare_run, train_from_file

QUIET = {"say": lambda line: None}


def four_layer_teacher(folder: Path) -> Path:
    """A tiny random Llama of 4 layers saved with save_pretrained, with the word-level tokenizer."""
    from transformers import LlamaForCausalLM

    config = tiny_llama().config
    config.num_hidden_layers = 4
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    make_tokenizer(folder)
    return folder


def cut(tmp_path: Path, **from_teacher) -> Path:
    return run_file(tmp_path, student={"path": None, "from_teacher": from_teacher})


def test_a_student_cut_from_the_teacher_trains_and_exports_with_two_layers(tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    four_layer_teacher(tmp_path / "teacher")
    lines: list[str] = []
    result = train_from_file(cut(tmp_path, layers=2, calibration_examples=4), say=lines.append)
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "final")
    assert final.config.num_hidden_layers == 2
    init = tmp_path / "out" / "student_init"
    report = json.loads((init / "importance.json").read_text())
    kept = report["plan"]["layers"]
    assert len(kept) == 2 and report["plan"]["layer_method"] == "block_influence"
    assert report["calibration"]["examples"] == 4 and len(report["block_influence"]) == 4
    assert (init / "layers.txt").read_text().startswith("layer  block influence")
    teacher = AutoModelForCausalLM.from_pretrained(tmp_path / "teacher")
    built = AutoModelForCausalLM.from_pretrained(init)
    for position, layer in enumerate(kept):  # the student as built holds the kept teacher layers' weights
        torch.testing.assert_close(
            built.model.layers[position].self_attn.q_proj.weight, teacher.model.layers[layer].self_attn.q_proj.weight
        )
    assert not torch.equal(final.model.layers[0].mlp.up_proj.weight, built.model.layers[0].mlp.up_proj.weight)
    assert final.config.distill_student["layers"] == kept
    card = (tmp_path / "out" / "final" / "README.md").read_text()
    assert f"cut from the teacher by `distill_core.students`: teacher layers {kept}" in card
    assert "calibrated on 4 training examples" in card and result.results["tokens"] > 0
    assert any("layer  block influence" in line for line in lines)


def test_an_explicit_layer_list_needs_no_calibration_and_keeps_those_layers(tmp_path) -> None:
    four_layer_teacher(tmp_path / "teacher")
    result = train_from_file(cut(tmp_path, layers=[0, 3]), overrides=["optimization.num_epochs=1"], **QUIET)
    assert result.built["plan"]["layers"] == [0, 3] and "calibration" not in result.built
    assert result.student.config.num_hidden_layers == 2


def test_a_bad_layer_index_is_refused_at_its_field_before_weights_load(tmp_path) -> None:
    model_folder(tmp_path / "teacher", layers=4)  # garbage weights: loading them would fail
    message = refused(cut(tmp_path, layers=[0, 7]))
    assert "student.from_teacher.layers.1: layer 7 is not a layer of the teacher, whose layers are 0..3" in message
    assert "student.from_teacher.layers: keeps 9 layers, but the teacher has 4" in refused(cut(tmp_path, layers=9))


def test_widths_beyond_the_teacher_are_refused(tmp_path) -> None:
    model_folder(tmp_path / "teacher")  # 2 heads, 2 key/value heads, 64 MLP channels, hidden 32
    message = refused(cut(tmp_path, heads=3, intermediate=100))
    assert "student.from_teacher.heads: 3 is more than the teacher's 2" in message
    assert "student.from_teacher.intermediate: 100 is more than the teacher's 64" in message


def test_matches_are_checked_against_the_student_as_it_will_be_cut(tmp_path) -> None:
    model_folder(tmp_path / "teacher", layers=4)
    match = {"layer_T": 4, "layer_S": 3, "feature": "hidden", "loss": "hidden_mse"}
    path = run_file(
        tmp_path,
        student={"path": None, "from_teacher": {"layers": 2, "layer_method": "first_last"}},
        distillation={"intermediate_matches": [match]},
    )
    assert "intermediate_matches.0.layer_S: layer 3 is beyond the student" in refused(path)


def test_path_and_from_teacher_are_exclusive(tmp_path) -> None:
    model_folder(tmp_path / "teacher")
    message = refused(run_file(tmp_path, student={"from_teacher": {"layers": 1}}))
    assert "student: set exactly one of path (a model folder) and from_teacher" in message
    assert "layer_method is 'explicit'" in refused(cut(tmp_path, layers=[0], layer_method="uniform"))


def test_dry_run_shows_the_planned_student_and_its_size(tmp_path) -> None:
    model_folder(tmp_path / "teacher", layers=4)
    lines: list[str] = []
    train_from_file(cut(tmp_path, layers=2, layer_method="uniform"), dry_run=True, say=lines.append)
    student = next(line for line in lines if line.startswith("student:"))
    assert "cut from the teacher: 2 layers by uniform" in student and "M parameters" in student
    prepared = prepare_run(cut(tmp_path, layers=[1, 2]))
    assert prepared.checked.student_config["num_hidden_layers"] == 2


def test_a_cut_student_trains_through_lora_and_exports_merged(tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    four_layer_teacher(tmp_path / "teacher")
    lora = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    path = run_file(tmp_path, student={"path": None, "from_teacher": {"layers": [0, 3]}, "lora": lora})
    train_from_file(path, overrides=["optimization.num_epochs=1"], **QUIET)
    final = tmp_path / "out" / "final"
    assert AutoModelForCausalLM.from_pretrained(final).config.num_hidden_layers == 2
    assert "LoRA adapter (r 4" in (final / "README.md").read_text()


def test_a_classifier_student_is_cut_from_a_bert_teacher(tmp_path) -> None:
    from test_run_classification import run_file as classification_run
    from test_run_classification import tiny_bert
    from transformers import AutoModelForSequenceClassification

    tiny_bert(tmp_path / "teacher")
    path = classification_run(tmp_path, student={"path": None, "from_teacher": {"layers": 1}})
    train_from_file(path, **QUIET)
    final = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out" / "final")
    assert final.config.num_hidden_layers == 1 and final.config.id2label == {0: "fresh", 1: "meh", 2: "rotten"}


def test_a_resumed_run_reads_the_student_as_built_instead_of_calibrating_again(tmp_path) -> None:
    four_layer_teacher(tmp_path / "teacher")
    path = cut(tmp_path, layers=2, calibration_examples=4)
    first = train_from_file(path, overrides=["training.ckpt_steps=1"], **QUIET)
    lines: list[str] = []
    again = train_from_file(path, overrides=["training.ckpt_steps=1"], resume=True, say=lines.append)
    assert any("reading the student cut from the teacher" in line for line in lines)
    assert not any("calibrating" in line for line in lines)
    assert again.built["plan"] == first.built["plan"]


def test_the_sections_name_what_the_students_package_and_the_evaluation_accept() -> None:
    from typing import get_args

    from distill_core.run.best import TASK_METRICS
    from distill_core.run.config import EVAL_METRICS, LAYER_METHODS, EvalSection, FromTeacherSection
    from distill_core.students.selection import LAYER_METHODS as SELECTION_METHODS

    assert LAYER_METHODS == SELECTION_METHODS
    assert set(get_args(get_args(FromTeacherSection.model_fields["layer_method"].annotation)[0])) == set(LAYER_METHODS)
    assert set(get_args(get_args(EvalSection.model_fields["metric"].annotation)[0])) == set(EVAL_METRICS)
    assert {name for names in TASK_METRICS.values() for name in names} == set(EVAL_METRICS)


def test_a_narrower_student_is_cut_by_activation_importance_and_trains(tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    four_layer_teacher(tmp_path / "teacher")  # 2 heads of 16, 2 key/value heads, 64 MLP channels
    result = train_from_file(cut(tmp_path, heads=1, intermediate=48), overrides=["optimization.num_epochs=1"], **QUIET)
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "final").config
    assert (final.num_hidden_layers, final.num_attention_heads, final.num_key_value_heads) == (4, 1, 1)
    assert final.intermediate_size == 48 and final.head_dim == 16
    assert result.built["plan"]["width"] == "activation importance" and "calibration" in result.built
