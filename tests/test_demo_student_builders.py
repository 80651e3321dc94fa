"""The classification demo's student builders: today's layer copy, block influence, width."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from distill_core.demo.batches import EncodedDataset  # noqa: E402
from distill_core.demo.models import count_parameters, make_student  # noqa: E402
from distill_core.demo.student_builders import (  # noqa: E402
    StudentShape,
    builder_shape,
    calibrate_teacher,
    calibration_batches,
    cut_student,
    hidden_matches,
    needs_calibration,
    width_shape,
)


@pytest.fixture
def tiny_bert() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                                     intermediate_size=512, max_position_embeddings=32, num_labels=3)
    return transformers.BertForSequenceClassification(config).eval()


@pytest.fixture
def batches() -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    dataset = EncodedDataset([torch.randint(1, 50, (length,), generator=generator).tolist()
                              for length in (5, 9, 7, 3, 8, 6)], labels=[0, 1, 2, 0, 1, 2])
    return calibration_batches(dataset, batches=2, batch_size=2)


def test_calibration_batches_are_the_first_examples_padded_without_labels():
    dataset = EncodedDataset([[1, 2], [3, 4, 5], [6], [7, 8]], labels=[0, 1, 0, 1])
    batches = calibration_batches(dataset, batches=5, batch_size=3)
    assert [batch["input_ids"].tolist() for batch in batches] == [[[1, 2, 0], [3, 4, 5], [6, 0, 0]], [[7, 8]]]
    assert batches[0]["attention_mask"].tolist() == [[1, 1, 0], [1, 1, 1], [1, 0, 0]]
    assert all(set(batch) == {"input_ids", "attention_mask"} for batch in batches)


def test_width_shape_of_minilm_matches_two_layers_with_three_half_mlp_layers():
    minilm = transformers.BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                     intermediate_size=1536)
    assert width_shape(minilm, 2) == StudentShape(layers=3, method="uniform", intermediate=768)
    assert width_shape(minilm, 2).kept_layers(minilm) == [1, 3, 5]
    assert builder_shape("layers", minilm, 2) == StudentShape(layers=2, method="uniform")
    assert builder_shape("block_influence", minilm, 2) == StudentShape(layers=2, method="block_influence")
    assert width_shape(minilm, 6).layers == 6 and width_shape(minilm, 6).intermediate == 1536  # nothing to add
    with pytest.raises(ValueError, match="layers, block_influence, width"):
        builder_shape("depth", minilm, 2)


def test_layers_builder_is_todays_copy_and_needs_no_calibration(tiny_bert):
    shape = builder_shape("layers", tiny_bert.config, 2)
    assert not needs_calibration(shape, tiny_bert.config)
    student = cut_student(tiny_bert, shape)
    expected = make_student(tiny_bert, [1, 3])  # student_init_layers(4, 2)
    for (name, value), (_, reference) in zip(student.state_dict().items(), expected.state_dict().items()):
        assert torch.equal(value, reference), name


def test_block_influence_builder_keeps_the_most_influential_layers(tiny_bert, batches):
    shape = builder_shape("block_influence", tiny_bert.config, 2)
    assert needs_calibration(shape, tiny_bert.config)
    with pytest.raises(ValueError, match="calibrate"):
        cut_student(tiny_bert, shape)
    scores = calibrate_teacher(tiny_bert, batches)
    student = cut_student(tiny_bert, shape, scores=scores)
    influence = torch.tensor(scores.block_influence)
    kept = sorted(influence.topk(2).indices.tolist())
    assert student.config.distill_student["layers"] == kept
    assert torch.equal(student.bert.encoder.layer[1].output.dense.weight,
                       tiny_bert.bert.encoder.layer[kept[1]].output.dense.weight)
    assert count_parameters(student) == count_parameters(make_student(tiny_bert, kept))


def test_width_builder_has_one_layer_more_and_about_the_same_parameters(tiny_bert, batches):
    scores = calibrate_teacher(tiny_bert, batches)
    shape = builder_shape("width", tiny_bert.config, 2)
    assert (shape.layers, shape.intermediate) == (3, 320)
    with pytest.raises(ValueError, match="calibrate"):  # the MLP channels are ranked by activation importance
        cut_student(tiny_bert, shape)
    student = cut_student(tiny_bert, shape, scores=scores)
    copy = cut_student(tiny_bert, builder_shape("layers", tiny_bert.config, 2))
    assert student.config.num_hidden_layers == 3 and student.config.intermediate_size == 320
    assert student.config.distill_student["layers"] == [0, 2, 3]  # student_init_layers(4, 3)
    kept = sorted(scores.mlp[3].topk(320).indices.tolist())
    assert torch.equal(student.bert.encoder.layer[2].output.dense.weight,
                       tiny_bert.bert.encoder.layer[3].output.dense.weight[:, kept])
    assert student.config.hidden_size == tiny_bert.config.hidden_size
    without = count_parameters(student, embeddings=False), count_parameters(copy, embeddings=False)
    assert abs(without[0] - without[1]) / without[1] < 0.05  # MLP channels come in multiples of 64
    batch = {"input_ids": torch.tensor([[1, 2, 3]]), "attention_mask": torch.ones(1, 3, dtype=torch.long)}
    outputs = student(**batch, output_hidden_states=True)
    assert outputs.logits.shape == (1, 3) and len(outputs.hidden_states) == 4


def test_hidden_matches_project_a_narrower_student(tiny_bert, batches):
    scores = calibrate_teacher(tiny_bert, batches)
    narrow = cut_student(tiny_bert, StudentShape(layers=4, method="block_influence", heads=1, hidden=8), scores=scores)
    matches = hidden_matches(tiny_bert.config, narrow.config, weight=0.1)
    assert [(m["layer_S"], m["layer_T"]) for m in matches] == [(1, 1), (2, 2), (3, 3), (4, 4)]
    assert all(m["proj"] == ["linear", 8, 16] and m["weight"] == 0.1 for m in matches)
    same = hidden_matches(tiny_bert.config, make_student(tiny_bert, [1, 3]).config, weight=0.1)
    assert [(m["layer_S"], m["layer_T"]) for m in same] == [(1, 2), (2, 4)] and "proj" not in same[0]
    assert hidden_matches(tiny_bert.config, narrow.config, weight=0) == []
