"""distill_core.layer_mapping: which teacher layers a student matches and starts from."""

from __future__ import annotations

import pytest

from distill_core import DistillationConfig
from distill_core.layer_mapping import student_init_layers, uniform_layer_mapping


@pytest.mark.parametrize(
    ("teacher", "student", "expected_T"),
    [(6, 2, [0, 3, 6]), (6, 3, [0, 2, 4, 6]), (12, 4, [0, 3, 6, 9, 12]), (12, 6, [0, 2, 4, 6, 8, 10, 12]),
     (12, 3, [0, 4, 8, 12]), (24, 6, [0, 4, 8, 12, 16, 20, 24]), (6, 6, list(range(7))), (6, 1, [0, 6])],
)
def test_hidden_mapping_pairs_each_student_layer_with_the_end_of_its_teacher_block(teacher, student, expected_T):
    matches = uniform_layer_mapping(teacher, student)
    assert [m["layer_S"] for m in matches] == list(range(student + 1))
    assert [m["layer_T"] for m in matches] == expected_T
    assert all(m["feature"] == "hidden" and m["loss"] == "hidden_mse" and m["weight"] == 1.0 for m in matches)


def test_student_init_layers_are_the_matched_teacher_layers_zero_based():
    assert student_init_layers(6, 2) == [2, 5]
    assert student_init_layers(12, 4) == [2, 5, 8, 11]
    for teacher, student in [(6, 3), (12, 6), (24, 6), (6, 4)]:
        matched = [m["layer_T"] for m in uniform_layer_mapping(teacher, student, include_embeddings=False)]
        assert student_init_layers(teacher, student) == [layer - 1 for layer in matched]


def test_attention_mapping_is_zero_based_and_has_no_embedding_entry():
    matches = uniform_layer_mapping(12, 4, "attention", "attention_mse")
    assert [(m["layer_S"], m["layer_T"]) for m in matches] == [(0, 2), (1, 5), (2, 8), (3, 11)]


def test_options_are_copied_into_every_match_and_the_result_is_a_valid_config():
    matches = uniform_layer_mapping(12, 4, loss="cos", weight=0.5, proj=["linear", 312, 768], include_embeddings=False)
    assert len(matches) == 4
    assert all(m["proj"] == ["linear", 312, 768] and m["weight"] == 0.5 for m in matches)
    matches[0]["proj"].append("mutated")  # each match holds its own copy
    assert matches[1]["proj"] == ["linear", 312, 768]
    config = DistillationConfig(intermediate_matches=uniform_layer_mapping(6, 2, proj=["linear", 256, 384]))
    assert [m.layer_T for m in config.intermediate_matches] == [0, 3, 6]


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [((2, 6), {}, "at most `num_teacher_layers`"), ((0, 1), {}, "num_teacher_layers"),
     ((6, 2.0), {}, "num_student_layers"), ((6, 2, "logits"), {}, "feature"),
     ((6, 2, "attention", "attention_mse"), {"proj": ["linear", 1, 2]}, "no width")],
)
def test_bad_arguments_are_named(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        uniform_layer_mapping(*args, **kwargs)
