"""The teacher cache's parts: example keys from real DataLoaders, crash states of the files, shared shards.

The crash tests write the states a kill can leave (a payload without its record, a torn record) and
reopen the files as a resumed run does; the shard tests open two ranks' stores in one folder.
"""

from __future__ import annotations

import hashlib

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from distill_core import DistillError
from distill_core.teacher_cache.keys import ExampleKeys, KeyedLoader, describe_batch
from distill_core.teacher_cache.layout import Entry, FieldSpec, Layout, pack_bits, unpack_bits
from distill_core.teacher_cache.store import RECORD, DiskStore, read_records


class Indexed(Dataset):
    """Example i holds its own index, so a batch shows which examples it holds."""

    def __len__(self) -> int:
        return 23

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"index": torch.tensor(index), "input_ids": torch.full((4,), index)}


def _pairs(keyed: KeyedLoader) -> list[tuple[list[int], list[int]]]:
    return [(batch["index"].tolist(), list(ids)) for batch, ids in keyed]


@pytest.mark.parametrize("workers", [0, 2])
def test_keys_are_the_dataset_indices_of_each_batch_in_the_plain_loaders_order(workers) -> None:
    loader = DataLoader(Indexed(), batch_size=4, shuffle=True, num_workers=workers, persistent_workers=workers > 0)
    keyed = KeyedLoader(loader, "the dataloader")
    torch.manual_seed(3)
    plain = [batch["index"].tolist() for batch in loader]
    torch.manual_seed(3)
    first = _pairs(keyed)
    assert [indices for indices, _ in first] == plain  # the same order: the wrapper draws nothing
    assert all(indices == ids for indices, ids in first)
    iterator = iter(keyed)
    next(iterator)  # an abandoned iteration (its prefetched indices must not leak into the next)
    assert all(indices == ids for indices, ids in _pairs(keyed))


def test_keys_follow_a_distributed_sampler_and_its_epoch() -> None:
    sampler = DistributedSampler(Indexed(), num_replicas=2, rank=1, shuffle=True, seed=5)
    keyed = KeyedLoader(DataLoader(Indexed(), batch_size=3, sampler=sampler), "the dataloader")
    from distill_core.runtime.distributed import set_sampler_epoch

    epochs = []
    for epoch in (0, 1):
        set_sampler_epoch(keyed.loader, epoch)
        pairs = _pairs(keyed)
        assert all(indices == ids for indices, ids in pairs)
        epochs.append([i for indices, _ in pairs for i in indices])
    assert epochs[0] != epochs[1] and sorted(epochs[0]) != sorted(range(23))  # a reshuffled half


def test_unkeyable_loaders_are_refused_with_the_fix() -> None:
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield {"input_ids": torch.zeros(2, 3)}

    with pytest.raises(DistillError, match="DataLoader with an IterableDataset, which yields no indices"):
        KeyedLoader(DataLoader(Stream(), batch_size=None), "the dataloader")
    with pytest.raises(DistillError, match="with batch_size=None"):
        KeyedLoader(DataLoader(Indexed(), batch_size=None), "the dataloader")


def test_digests_trim_each_example_to_its_length_and_see_one_changed_token() -> None:
    ids = torch.tensor([[5, 6, 7, 0, 0], [8, 9, 0, 0, 0]])
    mask = (ids != 0).long()
    batch = describe_batch(ExampleKeys((0, 1), "dataset-index", {"input_ids": ids, "attention_mask": mask}))
    assert (batch.padded_length, batch.lengths) == (5, (3, 2))
    shorter = describe_batch(
        ExampleKeys((0, 1), "dataset-index", {"input_ids": ids[:, :3], "attention_mask": mask[:, :3]})
    )
    assert shorter.digests == batch.digests  # the same examples padded less: the same content
    changed = ids.clone()
    changed[1, 1] = 10
    other = describe_batch(ExampleKeys((0, 1), "dataset-index", {"input_ids": changed, "attention_mask": mask}))
    assert other.digests[0] == batch.digests[0] and other.digests[1] != batch.digests[1]


def test_bits_round_trip_any_mask_dtype() -> None:
    for values in (torch.tensor([1, 0, 1, 1, 0, 0, 0, 1, 1]), torch.ones(3, 3, dtype=torch.bool)):
        packed = pack_bits(values)
        assert packed.dtype == torch.uint8 and packed.numel() == (values.numel() + 7) // 8
        assert torch.equal(unpack_bits(packed, values.shape, values.dtype), values)


# -- the files -------------------------------------------------------------------------------------------
LAYOUT = Layout(
    fields=(
        FieldSpec(("hidden", 0), "tensor", "float32", ("L", 3)),
        FieldSpec(("logits", 0), "tensor", "bfloat16", (2,)),
    ),
    layers=(("hidden", 1),),
    logits_list=False,
    vocab=None,
)


def entry(key: int, length: int) -> Entry:
    generator = torch.Generator().manual_seed(key)
    arrays = [torch.randn(length, 3, generator=generator), torch.randn(2, generator=generator).bfloat16()]
    return Entry(arrays, length, 0, hashlib.blake2b(str(key).encode(), digest_size=16).digest())


def open_store(folder, rank: int = 0, share: bool = True) -> DiskStore:
    store = DiskStore(folder, rank, share=share)
    store.layout = LAYOUT
    return store


def assert_reads(store: DiskStore, keys: range, lengths: dict[int, int] | None = None) -> None:
    for key in keys:
        got, where = store.get(key)
        expected = entry(key, (lengths or {}).get(key, key % 5 + 1))
        assert got.digest == expected.digest and got.length == expected.length
        assert all(torch.equal(a, b) for a, b in zip(got.arrays, expected.arrays)), where


def test_entries_round_trip_and_a_second_writer_of_the_same_rank_is_refused(tmp_path) -> None:
    store = open_store(tmp_path)
    store.put_many([(key, entry(key, key % 5 + 1)) for key in range(10)])
    assert_reads(store, range(10))
    assert store.get(99) is None
    with pytest.raises(DistillError, match="is being written by another process"):
        DiskStore(tmp_path, 0, share=True)
    store.close()
    reopened = open_store(tmp_path)
    assert_reads(reopened, range(10))
    assert reopened.summary()["entries"] == 10


def test_every_state_a_kill_can_leave_reopens_to_a_consistent_cache(tmp_path) -> None:
    """Killed after a payload but before its record; killed in the middle of a record: the reopened
    store has exactly the recorded entries, cuts the orphan payload, drops the torn record (with a
    warning), and appends new entries that read back correctly."""
    store = open_store(tmp_path)
    store.put_many([(key, entry(key, key % 5 + 1)) for key in range(6)])
    store.close()
    data, index = tmp_path / "rank-00000.data", tmp_path / "rank-00000.index"
    recorded = data.stat().st_size
    with open(data, "ab") as handle:  # a payload whose record never came
        handle.write(b"\x07" * 77)
    store = open_store(tmp_path)
    assert data.stat().st_size == recorded
    store.put_many([(6, entry(6, 2))])
    assert_reads(store, range(7))
    store.close()
    with open(index, "ab") as handle:  # a record cut short
        handle.write(RECORD.pack(7, recorded, 8, 1, 0, b"\0" * 16, b"\0" * 8, b"\0" * 8)[:40])
    with pytest.warns(UserWarning, match="dropping an incomplete last record"):
        store = open_store(tmp_path)
    assert store.get(7) is None
    store.put_many([(7, entry(7, 3))])
    assert_reads(store, range(8), {7: 3})
    store.close()
    assert len(read_records(index)[0]) == 8


def test_a_rebuilt_entry_supersedes_the_old_one(tmp_path) -> None:
    store = open_store(tmp_path)
    store.put_many([(1, entry(1, 2))])
    newer = entry(5, 4)
    store.put_many([(1, newer)])
    got, _ = store.get(1)
    assert got.length == 4 and torch.equal(got.arrays[0], newer.arrays[0])
    store.close()
    assert open_store(tmp_path).get(1)[0].length == 4


def test_ranks_read_each_others_entries_when_keys_are_dataset_indices(tmp_path) -> None:
    """Each rank appends to its own files; with shared keys a rank finds another's entries, also those
    appended after it opened the cache (a DistributedSampler reshuffles examples between ranks)."""
    rank0, rank1 = open_store(tmp_path, 0), open_store(tmp_path, 1)
    rank0.put_many([(key, entry(key, key % 5 + 1)) for key in range(0, 10, 2)])
    rank1.put_many([(key, entry(key, key % 5 + 1)) for key in range(1, 10, 2)])
    assert_reads(rank0, range(10))
    assert_reads(rank1, range(10))
    assert rank0.get(3)[1].endswith("rank-00001.data")
    private = open_store(tmp_path, 2, share=False)
    assert private.get(3) is None  # batch-position keys name other examples on another rank
    assert rank0.summary()["entries"] == 10


def test_the_ranks_counts_for_the_logs_add_up_to_every_record_once(tmp_path) -> None:
    """Summed over the ranks of a run, the counts give every record once: each rank counts its own
    shard (its view of the others' lags), and the shards a larger earlier run left are split among them."""
    for rank, keys in ((0, range(0, 4)), (1, range(4, 6)), (2, range(6, 9)), (3, range(9, 10))):  # a 4-process run
        store = open_store(tmp_path, rank)
        store.put_many([(key, entry(key, 2)) for key in keys])
        store.close()
    rank0, rank1 = open_store(tmp_path, 0), open_store(tmp_path, 1)  # now two processes
    rank1.put_many([(key, entry(key, 2)) for key in range(10, 13)])  # rank 0 has not looked since
    assert (rank0.count(2), rank1.count(2)) == (4 + 3, 5 + 1)
    assert rank0.count(2) + rank1.count(2) == 13
    assert rank0.count(1) == 4 + 2 + 3 + 1  # one process counts every shard, as it last read them


def test_damaged_or_foreign_files_are_named_not_a_traceback(tmp_path) -> None:
    """A stray copy beside the shards is ignored; a rank that has not learnt the layout yet treats another
    rank's entry as a miss; a layout that does not fit the stored bytes, and a malformed meta.json, are
    errors naming the file and the fix."""
    store = open_store(tmp_path)
    store.put_many([(key, entry(key, 2)) for key in range(3)])
    (tmp_path / "rank-00000.bak.index").write_bytes((tmp_path / "rank-00000.index").read_bytes())
    fresh = DiskStore(tmp_path, 1, share=True)  # before its first put: no layout yet
    assert fresh.get(1) is None
    fresh.layout = Layout(fields=LAYOUT.fields[:1], layers=LAYOUT.layers, logits_list=False, vocab=None)
    with pytest.raises(DistillError, match=r"rank-00000\.data: the entry of example 1 holds \d+ bytes.*delete"):
        fresh.get(1)

    from distill_core.teacher_cache.cache import _stored_layout

    with pytest.raises(DistillError, match=r"meta\.json: the stored layout is malformed \(KeyError\('kind'\)\)"):
        _stored_layout({"fields": [{"path": ["logits"], "dtype": "float32", "dims": []}]}, tmp_path / "meta.json")


def test_a_shard_another_rank_is_still_creating_is_read_later(tmp_path) -> None:
    """Another rank's index file exists but its header is not written yet (it is opening the cache at the
    same moment): opening must not call it corrupt, and its entries are found once it has written them."""
    (tmp_path / "rank-00001.index").write_bytes(b"")
    store = open_store(tmp_path, 0)
    (tmp_path / "rank-00001.index").unlink()
    other = open_store(tmp_path, 1)
    other.put_many([(4, entry(4, 2))])
    assert_reads(store, range(4, 5), {4: 2})
