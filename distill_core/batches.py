"""The data path: where batches come from, how they reach the device, how a model is called on one.

- :class:`BatchSource` yields ``(task, batch, keys)`` epoch by epoch from one DataLoader (or any
  re-iterable of batches); :class:`TaskMixture` draws each batch's task with probability ∝ size^tau
  from several (:class:`~distill_core.distillers.MultiTaskDistillation`).
- :func:`device_batches` is the one path from a source's batch to what a step uses: the user's
  ``batch_postprocessor``, the example keys of the teacher cache, the move to the device. Training
  and building the teacher cache both go through it.
- :func:`call_model` calls a model on a batch: ``model(**batch)`` for mappings, ``model(*batch)``
  for tuples and lists.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch

from distill_core.data import sampling_like

if TYPE_CHECKING:
    from distill_core.runtime import Runtime
    from distill_core.teacher_cache.keys import ExampleKeys, KeyedLoader

__all__ = ["BatchSource", "TaskMixture", "call_model", "device_batches"]

#: (task, batch, example keys or None), as a source yields them
SourceItem = tuple["str | None", Any, "ExampleKeys | None"]


def call_model(model: torch.nn.Module, batch: Any, model_args: Mapping[str, Any]) -> Any:
    """Call ``model(**batch)`` for mappings, ``model(*batch)`` for tuples/lists, else ``model(batch)``."""
    if type(batch) is dict or isinstance(batch, Mapping):
        return model(**batch, **model_args)
    if isinstance(batch, (list, tuple)):
        return model(*batch, **model_args)
    return model(batch, **model_args)


def loader_generators(loader: Any) -> list[torch.Generator]:
    """The ``torch.Generator`` objects a DataLoader draws from (its own, its sampler's), each once.

    A DataLoader built with ``generator=`` shuffles (and seeds its workers) from that generator, not
    from torch's global RNG; resume must put it back where the epoch started, as it does the global one.
    """
    found: list[torch.Generator] = []
    owners = [loader]
    for _ in range(3):  # the loader, its (batch) sampler, the sampler inside a batch sampler
        nested = []
        for owner in owners:
            generator = getattr(owner, "generator", None)
            if isinstance(generator, torch.Generator) and all(generator is not seen for seen in found):
                found.append(generator)
            nested += [getattr(owner, name, None) for name in ("sampler", "batch_sampler")]
        owners = [owner for owner in nested if owner is not None]
    return found


class BatchSource:
    """Yields ``(task, batch, keys)`` epoch by epoch from one dataloader.

    ``task`` is None outside multi-task runs; ``keys`` says which examples the batch holds once
    :meth:`record_example_keys` was called (for the teacher cache), else None.
    """

    def __init__(self, dataloader: Any, role: str = "the dataloader") -> None:
        self.dataloader = dataloader
        self.role = role
        self.keyed: KeyedLoader | None = None
        self.sharded: list[tuple[Any, Any]] = []  # (the user's loader, the loader each rank reads instead)

    def tasks(self) -> list[str | None]:
        return [None]

    def loaders(self) -> list[Any]:
        """The dataloaders this source reads."""
        return [self.dataloader]

    def generator_states(self) -> list[torch.Tensor]:
        """The states of the loaders' own generators (for resume; see :func:`loader_generators`)."""
        return [generator.get_state() for loader in self.loaders() for generator in loader_generators(loader)]

    def set_generator_states(self, states: list[torch.Tensor] | None) -> None:
        """Put the loaders' own generators back to ``states`` (from :meth:`generator_states`)."""
        if not states:
            return
        generators = [generator for loader in self.loaders() for generator in loader_generators(loader)]
        if len(generators) != len(states):
            raise ValueError(
                f"the checkpoint holds the states of {len(states)} data-loader generator(s), but this run's "
                f"loaders have {len(generators)}; resume with the same DataLoader settings (generator=...)"
            )
        for generator, saved in zip(generators, states):
            generator.set_state(saved)

    def batches_per_epoch(self) -> int | None:
        try:
            return len(self.dataloader)
        except TypeError:
            return None

    def shard(self, runtime: Runtime, seed: int) -> None:
        """Give each rank its share of the data (under torch.distributed)."""
        given = self.dataloader
        self.dataloader = runtime.shard_data(given, self.role, seed)
        self.sharded = [(given, self.dataloader)]

    def users_loaders_as_read(self) -> contextlib.AbstractContextManager[None]:
        """Within the block, the user's own DataLoader objects sample as this rank reads them (after :meth:`shard`).

        So ``len(loader)`` in code of the user's that runs there (an LR scheduler factory) counts this
        rank's batches per epoch, not the whole dataset's.
        """
        return sampling_like(self.sharded)

    def set_epoch(self, epoch: int) -> None:
        from distill_core.runtime.distributed import set_sampler_epoch

        set_sampler_epoch(self.dataloader, epoch)

    def record_example_keys(self) -> None:
        """Yield each batch's example keys from now on (after :meth:`shard`: the keys are dataset indices)."""
        from distill_core.teacher_cache.keys import KeyedLoader

        self.keyed = KeyedLoader(self.dataloader, self.role)
        self.dataloader = self.keyed.loader

    def epoch(self) -> Iterator[SourceItem]:
        if self.keyed is not None:
            from distill_core.teacher_cache.keys import ExampleKeys

            for batch, ids in self.keyed:
                yield None, batch, ExampleKeys(ids, self.keyed.kind, batch)
            return
        for batch in self.dataloader:
            yield None, batch, None


_USED_UP = object()


class TaskMixture(BatchSource):
    """Batches from several task dataloaders; each batch's task is drawn with probability ∝ size^tau.

    Draws come from a generator seeded from torch's global RNG at the epoch's start, so a seeded run
    (and a resumed one) sees the same task order. Tasks are drawn without end: train with num_steps.
    """

    def __init__(self, dataloaders: Mapping[str, Any], tau: float) -> None:
        self.dataloaders = dict(dataloaders)
        self.task_names = list(self.dataloaders)
        sizes = []
        for task, loader in self.dataloaders.items():
            try:
                sizes.append(float(len(loader)))
            except TypeError:
                raise TypeError(
                    f"dataloaders[{task!r}] has no length; task sampling needs each loader's size"
                ) from None
        if any(size <= 0 for size in sizes):
            raise ValueError(
                f"every task dataloader must be non-empty, sizes were {dict(zip(self.task_names, sizes))}"
            )
        weights = torch.tensor(sizes, dtype=torch.float64) ** tau
        self.probabilities = weights / weights.sum()
        self.keyed_tasks: dict[str, Any] = {}
        self.sharded = []

    def tasks(self) -> list[str | None]:
        return list(self.task_names)

    def loaders(self) -> list[Any]:
        return list(self.dataloaders.values())

    def batches_per_epoch(self) -> int | None:
        return None

    def shard(self, runtime: Runtime, seed: int) -> None:
        given = self.dataloaders
        self.dataloaders = {
            task: runtime.shard_data(loader, f"dataloaders[{task!r}]", seed) for task, loader in given.items()
        }
        self.sharded = [(given[task], self.dataloaders[task]) for task in self.task_names]

    def set_epoch(self, epoch: int) -> None:
        from distill_core.runtime.distributed import set_sampler_epoch

        for loader in self.dataloaders.values():
            set_sampler_epoch(loader, epoch)

    def record_example_keys(self) -> None:
        from distill_core.teacher_cache.keys import KeyedLoader

        self.keyed_tasks = {
            task: KeyedLoader(loader, f"dataloaders[{task!r}]") for task, loader in self.dataloaders.items()
        }
        self.dataloaders = {task: keyed.loader for task, keyed in self.keyed_tasks.items()}

    def _iterate(self, task: str) -> Iterator[tuple[Any, ExampleKeys | None]]:
        keyed = self.keyed_tasks.get(task)
        if keyed is None:
            return ((batch, None) for batch in self.dataloaders[task])
        from distill_core.teacher_cache.keys import ExampleKeys

        return ((batch, ExampleKeys(ids, keyed.kind, batch)) for batch, ids in keyed)

    def task_epoch(self, task: str) -> Iterator[SourceItem]:
        """One pass over one task's data (building the teacher cache goes task by task)."""
        for batch, keys in self._iterate(task):
            yield task, batch, keys

    def epoch(self) -> Iterator[SourceItem]:
        # Task draws and the (re)starts of task loaders, whose shuffling seeds itself from torch's
        # global RNG, use a private RNG seeded once at the epoch's start. Interleaved with dropout
        # they would otherwise depend on the training's own draws, and a resumed run could not
        # replay the epoch's batches (the loop replays only what is drawn at the epoch's start).
        seed = int(torch.randint(0, 2**62, (1,)))
        generator = torch.Generator().manual_seed(seed)
        private_rng = torch.Generator().manual_seed(seed + 1).get_state()
        iterators: dict[str, Iterator[Any]] = {}
        while True:
            task = self.task_names[int(torch.multinomial(self.probabilities, 1, generator=generator))]
            iterator = iterators.get(task)
            item = _USED_UP if iterator is None else next(iterator, _USED_UP)
            if item is _USED_UP:  # first use, or this task's data is used up: start it over
                with torch.random.fork_rng(devices=[]):
                    torch.set_rng_state(private_rng)
                    iterator = iterators[task] = self._iterate(task)
                    item = next(iterator)
                    private_rng = torch.get_rng_state()
            batch, keys = item
            yield task, batch, keys


def device_batches(
    items: Iterable[SourceItem],
    runtime: Runtime,
    postprocess: Callable[[Any], Any] | None,
) -> Iterator[tuple[str | None, Any, ExampleKeys | None]]:
    """``(task, device batch, example keys)`` of each source item: post-processed, keyed, on the device.

    A ``batch_postprocessor`` with ``makes_new_examples`` (on-policy samples) gives batches no
    dataset index names; the keys then say so. Otherwise the keys describe the batch as it is after
    the post-processor, so the teacher cache checks the content the teacher sees.
    """
    for task, batch, keys in items:
        host = batch if postprocess is None else postprocess(batch)
        if keys is not None and postprocess is not None:
            if host is not batch and getattr(postprocess, "makes_new_examples", False):
                from distill_core.teacher_cache.keys import KIND_GENERATED

                keys = replace(keys, ids=(), kind=KIND_GENERATED, host_batch=host)
            else:
                keys = replace(keys, host_batch=host)
        yield task, runtime.to_device(host), keys
