"""The teacher-cache side of a distiller: what to store per teacher, opening the cache, building it ahead.

Mixed into :class:`~distill_core.distillers.distillation.Distillation` (and so into the multi-teacher
and multi-task distillers), which calls :meth:`TeacherCacheSupport._open_cache` from ``prepare``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from distill_core.errors import DistillError
from distill_core.teacher_cache.cache import Selection, TeacherCache
from distill_core.teacher_cache.keys import ExampleKeys, KeyedLoader
from distill_core.teacher_cache.topk import is_shift_invariant

if TYPE_CHECKING:
    from distill_core.config import DistillationConfig


class TeacherCacheSupport:
    """Methods a distiller with ``DistillationConfig.teacher_cache`` uses (see docs/teacher-cache.md)."""

    teacher_cache: TeacherCache | None

    def _make_cache(self, config: DistillationConfig) -> TeacherCache:
        cache = config.teacher_cache
        if cache.top_k is not None and self.use_kd and not is_shift_invariant(self.kd.row_loss, config.temperature):
            raise DistillError(
                f"teacher_cache.top_k={cache.top_k} stores log-probabilities, which equal the teacher's logits only up "
                f"to a constant per position, but kd_loss_type {config.kd_loss_type!r} changes its value when such a "
                f"constant is added (it compares logits, not distributions); use top_k=None (dense logits) or a "
                f"divergence such as 'kl' or 'ce'"
            )
        return TeacherCache(
            cache,
            runtime=self.runtime,
            temperature=config.temperature,
            vocab_size=self.kd_vocab_size,
            chunk_rows=config.token_kd_chunk_size,
        )

    @property
    def wants_example_keys(self) -> bool:
        """Whether the loop must give each batch its examples' keys (the teacher cache is on)."""
        return self.teacher_cache is not None

    def _teacher_task(self, key: Any) -> str | None:
        """The task whose batches teacher ``key`` sees (multi-task runs), else None."""
        return None

    def _cache_selection(self, key: Any) -> Selection:
        """What the configured losses read of teacher ``key``: the cache stores exactly this."""
        task = self._teacher_task(key)
        features: dict[str, set[int]] = {}
        for bound in self.matches:
            if self.match_teacher(bound.spec, task) == key:
                layers = bound.spec.layer_T if isinstance(bound.spec.layer_T, list) else [bound.spec.layer_T]
                features.setdefault(bound.spec.feature, set()).update(layers)
        custom = sorted({b.spec.module_T for b in self.custom if self.match_teacher(b.spec, task) == key})
        return Selection(
            logits=self.use_kd,
            features=tuple((name, tuple(sorted(layers))) for name, layers in sorted(features.items())),
            masks=bool(features),
            custom=tuple(custom),
        )

    def _open_cache(self, model_args: Mapping[str, Any], kind: str) -> None:
        if self.teacher_cache.is_open:
            self.teacher_cache.open({}, kind)  # checks the kind only
            return
        self.teacher_cache.open(
            {
                key: (
                    self.teachers[key],
                    self.adaptors_T[key].function,
                    self._cache_selection(key),
                    self.adaptors_T[key].call_args(model_args),
                )
                for key in self.teachers
            },
            kind,
        )

    def log_scalars(self) -> dict[str, float]:
        """The teacher cache's hit rate and entries, written with the losses at logging points."""
        return {} if self.teacher_cache is None or not self.teacher_cache.is_open else self.teacher_cache.scalars()

    def __exit__(self, *exc_info: Any) -> None:
        super().__exit__(*exc_info)
        if self.teacher_cache is not None:
            self.teacher_cache.close()

    def build_teacher_cache(
        self,
        dataloader: Any = None,
        *,
        dataloaders: Mapping[str, Any] | None = None,
        batch_postprocessor: Callable[[Any], Any] | None = None,
        **model_args: Any,
    ) -> dict[str, Any]:
        """Run the teachers over the data once and store their outputs, before training.

        Examples already stored are skipped. Pass the keyword arguments ``train()`` will pass to the
        models (e.g. ``output_hidden_states=True``): they are part of the cache's fingerprint. Under
        torch.distributed each rank stores its share of the examples.

        :param dataloader: the training data (a DataLoader or a list of batches).
        :param dataloaders: ``{task: loader}`` for :class:`MultiTaskDistillation`.
        :returns: per teacher: entries, bytes, rows, positions, hits, misses and entries stored.
        """
        import torch

        from distill_core.runtime.distributed import set_sampler_epoch

        if self.teacher_cache is None:
            raise DistillError(
                "build_teacher_cache() needs DistillationConfig.teacher_cache (e.g. teacher_cache='cache_dir' or "
                "{'location': 'memory'})"
            )
        if getattr(batch_postprocessor, "makes_new_examples", False):
            raise DistillError(
                f"build_teacher_cache() got batch_postprocessor={type(batch_postprocessor).__name__}, which makes new "
                f"examples (e.g. on-policy samples) that no dataset index names; build the cache without it (train() "
                f"runs the teachers on such batches and serves the others from the cache)"
            )
        loaders = self._cache_loaders(dataloader, dataloaders)
        entered_here = not self._in_context
        if entered_here:
            self.__enter__()
        try:
            for task, (role, loader) in loaders.items():
                keyed = KeyedLoader(self.runtime.shard_data(loader, role, 0), role)
                set_sampler_epoch(keyed.loader, 0)
                bar = self._build_bar(len(keyed), role)
                for batch, ids in keyed:
                    host = batch if batch_postprocessor is None else batch_postprocessor(batch)
                    examples = ExampleKeys(ids, keyed.kind, host)
                    self._open_cache(model_args, keyed.kind)
                    device_batch = self.runtime.to_device(host)
                    with self.runtime.autocast(), torch.no_grad():
                        self.teacher_cache.outputs(
                            examples,
                            self.teacher_keys(task),
                            lambda missing, b=device_batch, t=task: self._run_teachers(b, t, model_args, missing),
                            self.device,
                            assemble=False,
                        )
                    if bar is not None:
                        stored = sum(t.stats.stored for t in self.teacher_cache.teachers.values())
                        bar.set_postfix(stored=stored, refresh=False)
                        bar.update(1)
                if bar is not None:
                    bar.close()
            return self.teacher_cache.summary()
        finally:
            if entered_here:
                self.__exit__(None, None, None)

    def _cache_loaders(self, dataloader: Any, dataloaders: Mapping[str, Any] | None) -> dict[Any, tuple[str, Any]]:
        if dataloaders is not None:
            if dataloader is not None:
                raise TypeError("build_teacher_cache() takes dataloader= or dataloaders=, not both")
            unknown = set(dataloaders) - set(self.teachers)
            if unknown:
                raise ValueError(
                    f"dataloaders names tasks {sorted(unknown)} without a teacher; tasks: {sorted(self.teachers)}"
                )
            return {task: (f"dataloaders[{task!r}]", loader) for task, loader in dataloaders.items()}
        if dataloader is None:
            raise TypeError("build_teacher_cache() needs the training data: dataloader= (or dataloaders= per task)")
        if self._teacher_task(next(iter(self.teachers))) is not None:
            raise TypeError("MultiTaskDistillation.build_teacher_cache() takes dataloaders={task: loader}")
        return {None: ("the dataloader", dataloader)}

    def _build_bar(self, total: int, role: str) -> Any:
        if not (self.runtime.is_main and self.train_config.progress_bar):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=f"teacher cache ({role})", unit="batch", dynamic_ncols=True)
