"""Rebuilding a user's DataLoader with other sampling, every other option kept.

Two places draw a user's batches differently from how the DataLoader was built: the distributed
runtime (a ``DistributedSampler``, so each rank reads its share) and the teacher cache (a batch
sampler that records which examples each batch holds). Both rebuild the loader through
:func:`rebuild_dataloader`, so neither drops an option the user set (the ``generator`` seeds the
workers, ``pin_memory_device`` says where to pin) and a new DataLoader option is added once.

:func:`sampling_like` lends a rebuilt loader's sampling to the user's own DataLoader object for a
moment, so code of the user's that measures ``len(loader)`` (an LR scheduler factory) counts the
batches this process actually reads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any


def rebuild_dataloader(loader: Any, **sampling: Any) -> Any:
    """A DataLoader over ``loader.dataset`` with ``loader``'s options and the given sampling.

    ``sampling``: the sampling arguments of the new loader (``batch_sampler=...``, or ``sampler=...``
    with ``batch_size`` and ``drop_last``). Every other option of ``loader`` is kept as it was.
    """
    from torch.utils.data import DataLoader

    options: dict[str, Any] = {
        "num_workers": loader.num_workers,
        "collate_fn": loader.collate_fn,
        "pin_memory": loader.pin_memory,
        "timeout": loader.timeout,
        "worker_init_fn": loader.worker_init_fn,
        "generator": loader.generator,
        "persistent_workers": loader.persistent_workers,
        "pin_memory_device": loader.pin_memory_device,
    }
    if hasattr(loader, "in_order"):  # torch >= 2.6
        options["in_order"] = loader.in_order
    if loader.num_workers > 0:
        options["prefetch_factor"] = loader.prefetch_factor
        options["multiprocessing_context"] = loader.multiprocessing_context
    options.update(sampling)
    return DataLoader(loader.dataset, **options)


#: the DataLoader attributes that decide which batches it yields (and so its ``len``)
_SAMPLING = ("sampler", "batch_sampler")


@contextlib.contextmanager
def sampling_like(pairs: Sequence[tuple[Any, Any]]) -> Iterator[None]:
    """Within the block, each ``given`` DataLoader of ``(given, rebuilt)`` samples as ``rebuilt`` does.

    ``len(given)`` is then ``len(rebuilt)``; on exit ``given`` has its own sampler and batch sampler
    back. DataLoader refuses to have these set after its construction (an iterator it made earlier
    would not follow), so they are set in the instance's ``__dict__``: only ``len()`` (or a new
    iteration) in the block is meant to use them.
    """
    saved: list[tuple[Any, dict[str, Any]]] = []
    try:
        for given, rebuilt in pairs:
            if given is rebuilt:
                continue
            attributes = vars(given)
            saved.append((given, {name: attributes[name] for name in _SAMPLING}))
            for name in _SAMPLING:
                attributes[name] = getattr(rebuilt, name)
        yield
    finally:
        for given, attributes in reversed(saved):
            vars(given).update(attributes)
