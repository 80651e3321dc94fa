"""Students cut out of a teacher, the teacher cache, the table, the verdict and the plot."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from distill_core.demo import teacher_store  # noqa: E402
from distill_core.demo.measure import accuracy, describe, latency_ms  # noqa: E402
from distill_core.demo.models import count_parameters, freeze_embeddings, make_student  # noqa: E402
from distill_core.demo.report import ModelResult, format_table, plot_curves, verdict  # noqa: E402


@pytest.fixture
def tiny_bert() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32, num_labels=3)
    return transformers.BertForSequenceClassification(config).eval()


def test_student_copies_the_chosen_layers_embeddings_and_head(tiny_bert):
    student = make_student(tiny_bert, [1, 3])
    assert student.config.num_hidden_layers == 2 and tiny_bert.config.num_hidden_layers == 4
    for student_index, teacher_index in enumerate([1, 3]):
        for (name, s), (_, t) in zip(student.bert.encoder.layer[student_index].state_dict().items(),
                                     tiny_bert.bert.encoder.layer[teacher_index].state_dict().items()):
            assert torch.equal(s, t), name
    assert torch.equal(student.classifier.weight, tiny_bert.classifier.weight)
    assert torch.equal(student.bert.embeddings.word_embeddings.weight, tiny_bert.bert.embeddings.word_embeddings.weight)
    # a copy, not shared: training the student leaves the teacher alone
    student.classifier.weight.data.add_(1)
    assert not torch.equal(student.classifier.weight, tiny_bert.classifier.weight)
    outputs = student(input_ids=torch.tensor([[1, 2, 3]]), output_hidden_states=True)
    assert outputs.logits.shape == (1, 3) and len(outputs.hidden_states) == 3


@pytest.mark.parametrize("layers", [[], [4], [-1]])
def test_student_layers_out_of_range_are_rejected(tiny_bert, layers):
    with pytest.raises(ValueError, match=r"indices in 0\.\.3"):
        make_student(tiny_bert, layers)


def test_freeze_embeddings_and_parameter_counts(tiny_bert):
    embeddings = sum(p.numel() for p in tiny_bert.bert.embeddings.parameters())
    assert count_parameters(tiny_bert) - count_parameters(tiny_bert, embeddings=False) == embeddings
    freeze_embeddings(tiny_bert)
    assert not any(p.requires_grad for p in tiny_bert.bert.embeddings.parameters())
    assert all(p.requires_grad for p in tiny_bert.bert.encoder.parameters())


def test_accuracy_and_latency(tiny_bert):
    batch = {"input_ids": torch.tensor([[1, 2], [3, 4]]), "attention_mask": torch.ones(2, 2, dtype=torch.long)}
    predictions = tiny_bert(**batch).logits.argmax(-1)
    assert accuracy(tiny_bert, [{**batch, "labels": predictions}]) == 1.0
    assert accuracy(tiny_bert, [{**batch, "labels": (predictions + 1) % 3}]) == 0.0
    assert latency_ms(tiny_bert, [[1, 2, 3]] * 4, warmup=1) > 0


def test_accuracy_can_show_its_progress(tiny_bert, capsys):
    batch = {"input_ids": torch.tensor([[1, 2], [3, 4]]), "attention_mask": torch.ones(2, 2, dtype=torch.long),
             "labels": torch.tensor([0, 1])}
    value = accuracy(tiny_bert, [batch, batch], progress="dev accuracy at step 7")
    assert value == accuracy(tiny_bert, [batch, batch])
    err = capsys.readouterr().err
    assert "dev accuracy at step 7" in err


def test_the_teacher_store_is_not_named_cache():
    """Issue 14: ``demo/cache.py`` kept teacher models; the name is left to the teacher-output cache."""
    import importlib.util

    assert importlib.util.find_spec("distill_core.demo.cache") is None
    assert importlib.util.find_spec("distill_core.demo.teacher_store") is not None


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("DISTILL_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert teacher_store.cache_root() == tmp_path / ".cache" / "distill"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert teacher_store.cache_root() == tmp_path / "xdg" / "distill"
    monkeypatch.setenv("DISTILL_CACHE_DIR", str(tmp_path / "own"))
    assert teacher_store.cache_root() == tmp_path / "own"
    assert teacher_store.cache_root(tmp_path / "flag") == tmp_path / "flag"


def test_teacher_key_changes_with_every_setting():
    base = dict(dataset="rt", train_size=4000, max_length=64, seed=0, steps=250, lr=5e-5, batch_size=32)
    keys = {teacher_store.teacher_key(**base)}
    for name, other in [("dataset", "bbc"), ("train_size", 10), ("max_length", 32), ("seed", 1), ("steps", 9),
                        ("lr", 1e-4), ("batch_size", 8), ("threads", 1), ("threads", 2)]:
        keys.add(teacher_store.teacher_key(**{**base, name: other}))
    assert len(keys) == 10
    assert teacher_store.teacher_key(**base) == "rt-n4000-len64-seed0-steps250-lr5e-05-bs32-v1"
    # the demo fixes its threads, and a teacher fine-tuned on other threads rounds differently
    assert teacher_store.teacher_key(**base, threads=1) == "rt-n4000-len64-seed0-steps250-lr5e-05-bs32-t1-v1"


def test_store_then_find_a_teacher(tmp_path, tiny_bert):
    assert teacher_store.cached_teacher(tmp_path, "k") is None
    folder = teacher_store.store_teacher(tmp_path, "k", tiny_bert, {"train_seconds": 1.0})
    assert teacher_store.cached_teacher(tmp_path, "k") == folder
    assert json.loads((folder / "info.json").read_text())["train_seconds"] == 1.0
    reloaded = transformers.BertForSequenceClassification.from_pretrained(folder)
    assert torch.equal(reloaded.classifier.weight, tiny_bert.classifier.weight)
    assert [p.name for p in (tmp_path / "teachers").iterdir()] == ["k"]  # no staging folder left behind
    teacher_store.update_info(folder, {"train_seconds": 1.0, "dev_accuracy": {"2000": 0.75}})
    assert json.loads((folder / "info.json").read_text())["dev_accuracy"] == {"2000": 0.75}
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []


def _rows(teacher, distilled, alone):
    return (ModelResult("teacher", 6, 22_700_000, 11_000_000, [teacher], 10.0),
            ModelResult("distilled", 2, 15_600_000, 3_700_000, distilled, 4.0),
            ModelResult("alone", 2, 15_600_000, 3_700_000, alone, 4.0))


def test_table_and_verdict():
    rows = _rows(0.80, [0.78, 0.77], [0.75, 0.76])
    table = format_table(rows)
    assert "22.7M (11.0M)" in table and "77.5% (78.0, 77.0)" in table and "2.5x faster" in table
    passed, lines = verdict(*rows)
    assert passed and "96.9%" in lines[0] and "+2.0 points" in lines[1]
    passed, lines = verdict(*_rows(0.80, [0.74], [0.70]))  # beats alone but keeps only 92.5%
    assert not passed and lines[0].endswith("NO")
    passed, lines = verdict(*_rows(0.80, [0.78], [0.79]))  # keeps 97.5% but loses to alone
    assert not passed and lines[1].endswith("NO")
    assert describe([0.5]) == "50.0%"


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = plot_curves({"distilled": [[(10, 0.6), (20, 0.7)]], "alone": [[(10, 0.55), (20, 0.65)]]},
                       tmp_path / "plot.png", teacher_accuracy=0.8, title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
