"""The run file for sequence classification: text_label data, label checks, accuracy/F1 and the export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from distill_core.run import RunFileError, prepare_run, train_from_file
from distill_core.run.classification import accuracy_and_macro_f1, label_names

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = "a great good fine film movie bad awful dull plot the was is very not".split()
REVIEWS = [
    ("a great film", "fresh"),
    ("the movie was very good", "fresh"),
    ("a fine plot", "fresh"),
    ("the film was awful", "rotten"),
    ("a dull movie", "rotten"),
    ("the plot is very bad", "rotten"),
    ("the film is not bad", "meh"),
    ("not a good movie not a bad movie", "meh"),
]


def make_tokenizer(folder: Path) -> Path:
    """A WordPiece tokenizer with [CLS] ... [SEP] around each text, saved with save_pretrained."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(SPECIAL + WORDS)}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
    )
    tokenizer.save_pretrained(folder)
    return folder


def tiny_bert(folder: Path, *, layers: int = 2, labels: list[str] | None = None, head: bool = True, seed: int = 0):
    """A random-init BERT saved to ``folder`` (a classifier with ``labels`` when ``head``), with the tokenizer."""
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    torch.manual_seed(seed)
    settings = dict(
        vocab_size=len(SPECIAL + WORDS),
        hidden_size=16,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    if head:
        names = labels or ["fresh", "meh", "rotten"]
        config = BertConfig(**settings, id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
        model = BertForSequenceClassification(config)
    else:
        model = BertModel(BertConfig(**settings))
    model.save_pretrained(folder)
    make_tokenizer(folder)
    return folder


def run_file(tmp_path: Path, **sections) -> Path:
    data = tmp_path / "reviews.jsonl"
    data.write_text("".join(json.dumps({"review": text, "verdict": label}) + "\n" for text, label in REVIEWS * 3))
    run = {
        "teacher": {"path": str(tmp_path / "teacher")},
        "student": {"path": str(tmp_path / "student")},
        "data": {
            "train_file": str(data),
            "format": "text_label",
            "text_column": "review",
            "label_column": "verdict",
            "max_length": 16,
            "eval_fraction": 0.25,
        },
        "training": {
            "output_dir": str(tmp_path / "out"),
            "log_dir": str(tmp_path / "logs"),
            "device": "cpu",
            "progress_bar": False,
        },
        "distillation": {"kd_loss_type": "kl", "temperature": 2.0, "hard_label_weight": 0.5},
        "optimization": {"batch_size": 4, "num_epochs": 2, "learning_rate": 1e-2},
    }
    for name, fields in sections.items():
        run[name] = {**run.get(name, {}), **fields} if isinstance(fields, dict) else fields
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(run))
    return path


def refused(path: Path, overrides=()) -> str:
    with pytest.raises(RunFileError) as caught:
        prepare_run(path, overrides=overrides)
    return str(caught.value)


# -- pure parts ------------------------------------------------------------------------------------
def test_accuracy_and_macro_f1_follow_their_definitions() -> None:
    predicted, targets = torch.tensor([0, 0, 1, 2, 2, 2]), torch.tensor([0, 1, 1, 2, 2, 0])
    scores = accuracy_and_macro_f1(predicted, targets, 3)
    # F1 per class: 0: 2*1/(2+2)=0.5, 1: 2*1/(1+2)=2/3, 2: 2*2/(3+2)=0.8
    assert scores["accuracy"] == pytest.approx(4 / 6)
    assert scores["macro_f1"] == pytest.approx((0.5 + 2 / 3 + 0.8) / 3)


def test_label_names_come_from_the_teachers_id2label_else_sorted_from_the_data() -> None:
    records = [{"label": "pos"}, {"label": "neg"}, {"label": "pos"}]
    assert label_names(records, "label", {}) == ["neg", "pos"]
    assert label_names(records, "label", {"id2label": {"0": "LABEL_0", "1": "LABEL_1"}}) == ["neg", "pos"]
    assert label_names(records, "label", {"id2label": {"1": "neg", "0": "pos"}}) == ["pos", "neg"]


# -- checks before weights -------------------------------------------------------------------------
def test_the_task_is_inferred_from_the_teachers_architecture_and_the_plan_shows_the_classes(tmp_path) -> None:
    tiny_bert(tmp_path / "teacher")
    tiny_bert(tmp_path / "student", layers=1, head=False)
    prepared = prepare_run(run_file(tmp_path))
    assert prepared.checked.task == "sequence_classification"
    assert prepared.checked.label_names == ["fresh", "meh", "rotten"]  # the teacher's order
    example = prepared.train_examples[0]
    assert isinstance(example["labels"], int) and example["input_ids"][0] == SPECIAL.index("[CLS]")
    text = "\n".join(prepared.plan.lines(prepared.checked))
    assert "3 classes ['fresh', 'meh', 'rotten']" in text and "class logits" in text


def test_a_label_set_that_does_not_fit_the_teachers_classes_is_refused(tmp_path) -> None:
    tiny_bert(tmp_path / "teacher", labels=["fresh", "rotten"])
    tiny_bert(tmp_path / "student", layers=1, labels=["x", "y", "z", "w"])
    message = refused(run_file(tmp_path))
    assert "data.label_column: label(s) ['meh'] are not among the teacher's classes ['fresh', 'rotten']" in message
    assert "student.path: the student classifies into 4 classes" in message


def test_a_teacher_without_a_head_and_a_causal_format_are_refused(tmp_path) -> None:
    tiny_bert(tmp_path / "teacher", head=False)
    tiny_bert(tmp_path / "student", layers=1, head=False)
    message = refused(run_file(tmp_path, task="sequence_classification"))
    assert "teacher.path: the teacher has no classification head of its own" in message
    tiny_bert(tmp_path / "teacher2")
    message = refused(run_file(tmp_path, teacher={"path": str(tmp_path / "teacher2")}, data={"format": "text"}))
    assert "data.format: a sequence-classification run reads `text_label` examples" in message


def test_text_label_with_a_causal_teacher_is_refused(tmp_path) -> None:
    from tiny_lm import tiny_llama

    tiny_llama(vocab=len(SPECIAL + WORDS)).save_pretrained(tmp_path / "teacher")
    make_tokenizer(tmp_path / "teacher")
    tiny_bert(tmp_path / "student", layers=1, head=False)
    assert "`text_label` examples are for sequence classification" in refused(run_file(tmp_path))


# -- a whole run -----------------------------------------------------------------------------------
def test_a_classification_run_exports_a_student_with_the_label_names_and_its_logits(tmp_path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tiny_bert(tmp_path / "teacher")
    tiny_bert(tmp_path / "student", layers=1, head=False, seed=1)
    lines: list[str] = []
    result = train_from_file(run_file(tmp_path), say=lines.append)
    final = tmp_path / "out" / "final"
    loaded = AutoModelForSequenceClassification.from_pretrained(final).eval()
    assert loaded.config.id2label == {0: "fresh", 1: "meh", 2: "rotten"}
    assert loaded.config.label2id == {"fresh": 0, "meh": 1, "rotten": 2}
    tokenizer = AutoTokenizer.from_pretrained(final)
    batch = tokenizer(["a great film", "the plot is very bad"], return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, result.student.eval()(**batch).logits, rtol=0, atol=0)
    saved = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert saved == result.results and saved["examples"] == 6
    assert 0 <= saved["student"]["accuracy"] <= 1 and 0 <= saved["student"]["macro_f1"] <= 1
    assert "teacher" in saved and 0 <= saved["agreement"] <= 1
    assert any("accuracy" in line and "macro-F1" in line for line in lines)
    assert f"| student | {saved['student']['accuracy']:.4f} |" in (final / "README.md").read_text()


def test_the_plan_counts_a_bert_classifiers_parameters_exactly(tmp_path) -> None:
    from transformers import AutoModelForSequenceClassification

    from distill_core.run.plan import estimate_parameters

    tiny_bert(tmp_path / "teacher")
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "teacher")
    settings = json.loads((tmp_path / "teacher" / "config.json").read_text())
    assert estimate_parameters(settings) == sum(parameter.numel() for parameter in model.parameters())
