"""The teacher-output cache as a teacher source: stored outputs where it has them, live teachers for the rest.

- :func:`make_cache` builds the distiller's :class:`~distill_core.teacher_cache.cache.TeacherCache`
  from the config (refusing a top-k cache for a loss that compares logits, not distributions).
- :class:`CachedTeachers` is the :class:`~distill_core.teachers.TeacherSource` a distiller with a
  cache uses: it opens the cache on the first batch (fingerprinting each teacher and what the losses
  read of it), serves stored outputs, and asks the live teachers for the examples it lacks.
- :func:`build_cache` fills the cache ahead of training, over the same data path as training.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from distill_core.batches import BatchSource, TaskMixture, device_batches
from distill_core.errors import DistillError
from distill_core.step import MicroBatch
from distill_core.teacher_cache.cache import Selection, TeacherCache
from distill_core.teacher_cache.topk import is_shift_invariant
from distill_core.teachers import LiveTeachers, TeacherSource, micro_batch

if TYPE_CHECKING:
    from distill_core.config import DistillationConfig
    from distill_core.distillers.routing import TeacherRouting
    from distill_core.runtime import Runtime
    from distill_core.teacher_cache.keys import ExampleKeys
    from distill_core.terms.loss import DistillationLoss
    from distill_core.tracking import ExtraScalar

__all__ = ["CachedTeachers", "build_cache", "make_cache"]


def make_cache(config: DistillationConfig, loss: DistillationLoss, vocab_size: int | None) -> TeacherCache:
    """The cache ``DistillationConfig.teacher_cache`` describes, for the configured losses."""
    cache = config.teacher_cache
    if cache.top_k is not None and loss.kd is not None and not is_shift_invariant(loss.kd.row_loss, config.temperature):
        raise DistillError(
            f"teacher_cache.top_k={cache.top_k} stores log-probabilities, which equal the teacher's logits only up "
            f"to a constant per position, but kd_loss_type {config.kd_loss_type!r} changes its value when such a "
            f"constant is added (it compares logits, not distributions); use top_k=None (dense logits) or a "
            f"divergence such as 'kl' or 'ce'"
        )
    return TeacherCache(
        cache, temperature=config.temperature, vocab_size=vocab_size, chunk_rows=config.token_kd_chunk_size
    )


class CachedTeachers(TeacherSource):
    """Stored teacher outputs standing in for the teachers; the live teachers run only on misses."""

    wants_example_keys = True

    def __init__(self, cache: TeacherCache, live: LiveTeachers, runtime: Runtime) -> None:
        self.cache = cache
        self.live = live
        self.runtime = runtime

    def _selection(self, key: Any) -> Selection:
        """What the configured losses read of teacher ``key``: the cache stores exactly this."""
        loss, task = self.live.loss, self.live.routing.teacher_task(key)
        features = loss.wanted_layers(key, task)
        return Selection(
            logits=loss.kd is not None,
            features=tuple((name, tuple(sorted(layers))) for name, layers in sorted(features.items())),
            masks=bool(features),
            custom=tuple(loss.custom_modules(key, task)),
        )

    def _open(self, model_args: Mapping[str, Any], kind: str) -> None:
        if self.cache.is_open:
            self.cache.open({}, kind, self.runtime)  # checks the kind only
            return
        live = self.live
        self.cache.open(
            {
                key: (
                    teacher,
                    live.adaptors[key].function,
                    self._selection(key),
                    live.adaptors[key].call_args(model_args),
                )
                for key, teacher in live.teachers.items()
            },
            kind,
            self.runtime,
        )

    def prepare(
        self, batch: Any, task: str | None, model_args: Mapping[str, Any], examples: ExampleKeys | None = None
    ) -> MicroBatch:
        """The teachers' outputs for ``batch``: stored entries where its ``examples`` have them."""
        if examples is not None and examples.generated:
            return self.live.prepare(batch, task, model_args)  # on-policy samples: no dataset index names them
        if examples is None:
            raise DistillError(
                "DistillationConfig.teacher_cache is set, but the batch came without example keys; the training "
                "loop passes them (examples=ExampleKeys(...)) when the distiller is trained with train()"
            )
        teacher, captured = self.outputs(batch, task, model_args, examples)
        return micro_batch(batch, task, teacher, captured, self.live.routing, self.live.with_logits)

    def outputs(
        self,
        batch: Any,
        task: str | None,
        model_args: Mapping[str, Any],
        examples: ExampleKeys,
        *,
        assemble: bool = True,
    ) -> tuple[dict[Any, Any], dict[tuple, torch.Tensor]]:
        """Each needed teacher's outputs (and custom features); ``assemble=False`` only stores the misses."""
        self._open(model_args, examples.kind)
        keys = self.live.routing.keys_for(task)
        return self.cache.outputs(
            examples,
            keys,
            lambda missing: self.live.run(batch, task, model_args, missing),
            self.runtime.device,
            assemble=assemble,
        )

    def log_scalars(self) -> dict[str, ExtraScalar]:
        """The cache's hit rate and entries (of all ranks together), written with the losses at logging points."""
        return self.cache.scalars() if self.cache.is_open else {}

    def close(self) -> None:
        self.cache.close()


def build_cache(
    source: CachedTeachers,
    routing: TeacherRouting,
    runtime: Runtime,
    dataloader: Any,
    dataloaders: Mapping[str, Any] | None,
    batch_postprocessor: Callable[[Any], Any] | None,
    model_args: Mapping[str, Any],
    *,
    progress_bar: bool,
) -> dict[str, Any]:
    """Run the teachers over the data once and store what the losses read (``build_teacher_cache``)."""
    if getattr(batch_postprocessor, "makes_new_examples", False):
        raise DistillError(
            f"build_teacher_cache() got batch_postprocessor={type(batch_postprocessor).__name__}, which makes new "
            f"examples (e.g. on-policy samples) that no dataset index names; build the cache without it (train() "
            f"runs the teachers on such batches and serves the others from the cache)"
        )
    data = _cache_data(routing, dataloader, dataloaders)
    data.shard(runtime, 0)
    data.record_example_keys()
    data.set_epoch(0)
    for task in data.tasks():
        items = data.epoch() if task is None else data.task_epoch(task)
        role = "the dataloader" if task is None else f"dataloaders[{task!r}]"
        bar = _bar(_length(data, task), role) if progress_bar else None
        for task_name, batch, keys in device_batches(items, runtime, batch_postprocessor):
            with runtime.autocast(), torch.no_grad():
                source.outputs(batch, task_name, model_args, keys, assemble=False)
            if bar is not None:
                stored = sum(t.stats.stored for t in source.cache.teachers.values())
                bar.set_postfix(stored=stored, refresh=False)
                bar.update(1)
        if bar is not None:
            bar.close()
    return source.cache.summary()


def _cache_data(routing: TeacherRouting, dataloader: Any, dataloaders: Mapping[str, Any] | None) -> BatchSource:
    if dataloaders is not None:
        if dataloader is not None:
            raise TypeError("build_teacher_cache() takes dataloader= or dataloaders=, not both")
        unknown = set(dataloaders) - set(routing.teachers)
        if unknown:
            raise ValueError(
                f"dataloaders names tasks {sorted(unknown)} without a teacher; tasks: {sorted(routing.teachers)}"
            )
        return TaskMixture(dataloaders, 1.0)
    if dataloader is None:
        raise TypeError("build_teacher_cache() needs the training data: dataloader= (or dataloaders= per task)")
    if routing.teacher_task(next(iter(routing.teachers))) is not None:
        raise TypeError("MultiTaskDistillation.build_teacher_cache() takes dataloaders={task: loader}")
    return BatchSource(dataloader)


def _length(data: BatchSource, task: str | None) -> int | None:
    loader = data.dataloader if task is None else data.dataloaders[task]
    try:
        return len(loader)
    except TypeError:
        return None


def _bar(total: int | None, role: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"teacher cache ({role})", unit="batch", dynamic_ncols=True)
