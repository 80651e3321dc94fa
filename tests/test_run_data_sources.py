"""Run-file data from parquet files and from folders written by datasets' save_to_disk, checked like jsonl."""

from __future__ import annotations

import json

import pytest
from test_run_config import CHATS, model_folder, refused, run_file

from distill_core.run import prepare_run, train_from_file
from distill_core.run.data import DataFileError, read_records

datasets = pytest.importorskip("datasets")  # in the test extra; pyarrow comes with it
TEXTS = ["hello how are you", "fine thanks", "the cat sat on the mat", "a dog ran"]


def test_parquet_rows_are_examples(tmp_path) -> None:
    datasets.Dataset.from_dict({"text": TEXTS, "other": [1, 2, 3, 4]}).to_parquet(str(tmp_path / "a.parquet"))
    assert read_records(tmp_path / "a.parquet") == [{"text": t, "other": n} for t, n in zip(TEXTS, [1, 2, 3, 4])]


def test_a_saved_dataset_gives_its_rows_with_class_names(tmp_path) -> None:
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    saved = datasets.Dataset.from_dict({"text": TEXTS[:2], "label": [1, 0]}, features=features)
    saved.save_to_disk(str(tmp_path / "saved"))
    assert read_records(tmp_path / "saved") == [{"text": TEXTS[0], "label": "pos"}, {"text": TEXTS[1], "label": "neg"}]


def test_a_dataset_dict_folder_asks_for_one_split(tmp_path) -> None:
    split = datasets.Dataset.from_dict({"text": TEXTS})
    datasets.DatasetDict({"train": split, "test": split}).save_to_disk(str(tmp_path / "both"))
    with pytest.raises(DataFileError, match=r"a DatasetDict saved with save_to_disk .*name one split's folder"):
        read_records(tmp_path / "both")
    with pytest.raises(DataFileError, match="is a folder, not a data file nor a dataset saved with save_to_disk"):
        read_records(tmp_path)


def chats_as(tmp_path, kind: str) -> str:
    rows = datasets.Dataset.from_list(CHATS * 4)
    if kind == "parquet":
        rows.to_parquet(str(tmp_path / "chats.parquet"))
        return str(tmp_path / "chats.parquet")
    rows.save_to_disk(str(tmp_path / "chats"))
    return str(tmp_path / "chats")


@pytest.mark.parametrize("kind", ["parquet", "saved"])
def test_columns_are_checked_before_weights_load(tmp_path, kind) -> None:
    model_folder(tmp_path / "teacher")
    model_folder(tmp_path / "student", layers=1)  # garbage weights: the checks load none
    train = chats_as(tmp_path, kind)
    prepared = prepare_run(run_file(tmp_path, data={"train_file": train}))
    assert (len(prepared.train_examples), len(prepared.eval_examples)) == (9, 3)
    message = refused(run_file(tmp_path, data={"train_file": train, "messages_column": "conversation"}))
    assert "data.messages_column: column 'conversation' is missing" in message and "['messages']" in message


def test_a_run_trains_from_a_saved_dataset_and_fingerprints_the_folder(tmp_path) -> None:
    model_folder(tmp_path / "teacher", garbage=False, seed=0)
    model_folder(tmp_path / "student", layers=1, garbage=False, seed=1)
    path = run_file(tmp_path, data={"train_file": chats_as(tmp_path, "saved")})
    result = train_from_file(path, overrides=["optimization.num_epochs=1"], say=lambda line: None)
    assert result.results["tokens"] > 0
    card = (tmp_path / "out" / "final" / "README.md").read_text()
    assert "data fingerprint (sha256 of the data files): `" in card
    assert json.loads((tmp_path / "out" / "eval_results.json").read_text()) == result.results
