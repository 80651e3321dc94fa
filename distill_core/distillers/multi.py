"""Several teachers (averaged KD targets) and several tasks (sampled per step) on the same loop."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from distill_core.adaptors import Adaptor
from distill_core.config import CustomMatch, DistillationConfig, TrainingConfig
from distill_core.distillers.distillation import Distillation
from distill_core.errors import DistillError
from distill_core.loop import BatchSource, MicroBatch, RunState, StepInfo
from distill_core.matching import BoundMatch
from distill_core.teacher_cache.keys import ExampleKeys


def _weight(value: Any, field: str) -> float:
    """``value`` as a finite non-negative float (a loss weight), or a ValueError naming ``field``."""
    try:
        weight = float(value)
    except (TypeError, ValueError):
        weight = math.nan
    if not (math.isfinite(weight) and weight >= 0):  # NaN passes `weight < 0`
        raise ValueError(f"{field} must be a finite non-negative number (it multiplies a loss), got {value!r}")
    return weight


class MultiTeacherDistillation(Distillation):
    """KD towards the (weighted) average of several teachers' logits.

    :param model_T: a list of teachers.
    :param adaptor_T: one adaptor for all teachers, or a list with one per teacher.
    :param teacher_weights: the averaging weights (default: equal).
    Intermediate and custom matches work too; a match names its teacher by index with ``teacher``
    (default 0).
    """

    def __init__(
        self,
        train_config: TrainingConfig,
        distill_config: DistillationConfig,
        model_T: Sequence[nn.Module],
        model_S: nn.Module,
        adaptor_T: Adaptor | Sequence[Adaptor | None] | None,
        adaptor_S: Adaptor | None,
        teacher_weights: Sequence[float] | None = None,
        custom_matches: Sequence[dict[str, Any] | CustomMatch] | None = None,
        *,
        tokenizer_T: Any = None,
        tokenizer_S: Any = None,
    ) -> None:
        if isinstance(model_T, nn.Module) or not isinstance(model_T, Sequence) or not model_T:
            raise TypeError("MultiTeacherDistillation needs model_T as a non-empty list of teachers")
        teachers = dict(enumerate(model_T))
        if isinstance(adaptor_T, Sequence):
            if len(adaptor_T) != len(model_T):
                raise ValueError(f"got {len(model_T)} teachers but {len(adaptor_T)} adaptors in adaptor_T")
            adaptors = dict(enumerate(adaptor_T))
        else:
            adaptors = {key: adaptor_T for key in teachers}
        weights = (
            [1.0] * len(teachers)
            if teacher_weights is None
            else [_weight(w, f"teacher_weights[{index}]") for index, w in enumerate(teacher_weights)]
        )
        if len(weights) != len(teachers) or sum(weights) <= 0:
            raise ValueError(
                f"teacher_weights must be {len(teachers)} finite non-negative numbers with a positive sum, "
                f"got {teacher_weights!r}"
            )
        self.teacher_weights = [w / sum(weights) for w in weights]
        self._init_distillation(
            train_config,
            distill_config,
            teachers,
            model_S,
            adaptors,
            {None: adaptor_S},
            custom_matches,
            tokenizer_T=tokenizer_T,
            tokenizer_S=tokenizer_S,
        )

    def _kd_teachers(self, results_T: dict[Any, Mapping[str, Any]]) -> list[tuple[float, Mapping[str, Any]]]:
        return [(weight, results_T[key]) for weight, key in zip(self.teacher_weights, self.teachers)]


#: the seed's other spelling
BasicMultiTeacherDistillation = MultiTeacherDistillation


_USED_UP = object()


class MultiTaskSource(BatchSource):
    """Batches from several task dataloaders; each batch's task is drawn with probability ∝ size^tau.

    Draws come from a generator seeded from torch's global RNG at the epoch's start, so a seeded run
    (and a resumed one) sees the same task order.
    """

    def __init__(self, dataloaders: Mapping[str, Any], tau: float) -> None:
        self.dataloaders = dict(dataloaders)
        self.tasks = list(self.dataloaders)
        sizes = []
        for task, loader in self.dataloaders.items():
            try:
                sizes.append(float(len(loader)))
            except TypeError:
                raise TypeError(
                    f"dataloaders[{task!r}] has no length; task sampling needs each loader's size"
                ) from None
        if any(size <= 0 for size in sizes):
            raise ValueError(f"every task dataloader must be non-empty, sizes were {dict(zip(self.tasks, sizes))}")
        weights = torch.tensor(sizes, dtype=torch.float64) ** tau
        self.probabilities = weights / weights.sum()
        self.keyed: dict[str, Any] = {}

    def batches_per_epoch(self) -> int | None:
        return None  # tasks are sampled without end: train with num_steps

    def shard(self, runtime: Any, seed: int) -> None:
        self.dataloaders = {
            task: runtime.shard_data(loader, f"dataloaders[{task!r}]", seed)
            for task, loader in self.dataloaders.items()
        }

    def set_epoch(self, epoch: int) -> None:
        from distill_core.runtime.distributed import set_sampler_epoch

        for loader in self.dataloaders.values():
            set_sampler_epoch(loader, epoch)

    def record_example_keys(self) -> None:
        from distill_core.teacher_cache.keys import KeyedLoader

        self.keyed = {task: KeyedLoader(loader, f"dataloaders[{task!r}]") for task, loader in self.dataloaders.items()}
        self.dataloaders = {task: keyed.loader for task, keyed in self.keyed.items()}

    def _iterate(self, task: str) -> Iterator[tuple[Any, ExampleKeys | None]]:
        keyed = self.keyed.get(task) if self.keyed else None
        if keyed is None:
            return ((batch, None) for batch in self.dataloaders[task])
        return ((batch, ExampleKeys(ids, keyed.kind, batch)) for batch, ids in keyed)

    def epoch(self) -> Iterator[tuple[str | None, Any, ExampleKeys | None]]:
        # Task draws and the (re)starts of task loaders, whose shuffling seeds itself from torch's
        # global RNG, use a private RNG seeded once at the epoch's start. Interleaved with dropout
        # they would otherwise depend on the training's own draws, and a resumed run could not
        # replay the epoch's batches (the loop replays only what is drawn at the epoch's start).
        seed = int(torch.randint(0, 2**62, (1,)))
        generator = torch.Generator().manual_seed(seed)
        private_rng = torch.Generator().manual_seed(seed + 1).get_state()
        iterators: dict[str, Iterator[Any]] = {}
        while True:
            task = self.tasks[int(torch.multinomial(self.probabilities, 1, generator=generator))]
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


class MultiTaskDistillation(Distillation):
    """One student learns several tasks from one teacher each.

    :param model_T: ``{task: teacher}``.
    :param adaptor_T: ``{task: adaptor}`` for the teachers.
    :param adaptor_S: ``{task: adaptor}`` for the student (an adaptor may take a ``task`` argument).
    :param task_weights: ``{task: weight}`` multiplying that task's loss (default 1).
    Train with ``train(optimizer, dataloaders={task: loader}, num_steps=N, tau=1.0)``.
    """

    # each step trains one task's head of the student: DDP must look for the unused parameters
    uses_part_of_student_per_step = True

    def __init__(
        self,
        train_config: TrainingConfig,
        distill_config: DistillationConfig,
        model_T: Mapping[str, nn.Module],
        model_S: nn.Module,
        adaptor_T: Mapping[str, Adaptor | None],
        adaptor_S: Mapping[str, Adaptor | None],
        task_weights: Mapping[str, float] | None = None,
    ) -> None:
        for name, value in (("model_T", model_T), ("adaptor_T", adaptor_T), ("adaptor_S", adaptor_S)):
            if not isinstance(value, Mapping):
                raise TypeError(
                    f"MultiTaskDistillation needs {name} as a dict {{task: ...}}, got {type(value).__name__}"
                )
        tasks = set(model_T)
        for name, value in (("adaptor_T", adaptor_T), ("adaptor_S", adaptor_S)):
            if set(value) != tasks:
                raise ValueError(f"{name} has tasks {sorted(value)} but model_T has {sorted(tasks)}")
        self.task_weights = {task: 1.0 for task in tasks}
        if task_weights:
            unknown = set(task_weights) - tasks
            if unknown:
                raise ValueError(f"task_weights names unknown tasks {sorted(unknown)}; tasks are {sorted(tasks)}")
            self.task_weights.update({task: _weight(w, f"task_weights[{task!r}]") for task, w in task_weights.items()})
        self._init_distillation(
            train_config, distill_config, dict(model_T), model_S, dict(adaptor_T), dict(adaptor_S), None
        )

    def _check_teacher_index(self, bound: BoundMatch) -> None:
        if bound.spec.teacher is not None:
            raise DistillError(
                f"{bound.label}: in multi-task runs each batch's teacher is its task's; remove 'teacher'"
            )

    def _role_T(self, key: Any) -> str:
        return f"adaptor_T[{key!r}]"

    def teacher_keys(self, task: str | None) -> list[Any]:
        return [task]

    def _teacher_task(self, key: Any) -> str | None:
        return key  # each task's batches go to its own teacher

    def match_teacher(self, spec: Any, task: str | None) -> Any:
        return task  # each batch's teacher is its task's

    def student_adaptor(self, task: str | None) -> Any:
        return self.adaptors_S[task]

    def train(  # type: ignore[override]
        self,
        optimizer: torch.optim.Optimizer,
        scheduler: Any = None,
        dataloader: Any = None,
        num_epochs: int | None = None,
        callback: Any = None,
        *,
        dataloaders: Mapping[str, Any] | None = None,
        tau: float = 1.0,
        num_steps: int | None = None,
        **kwargs: Any,
    ) -> RunState:
        """Train on batches of all tasks: each batch's task is drawn with probability ∝ size^tau.

        :param dataloaders: ``{task: loader}``, one per teacher.
        :param tau: 1 samples tasks in proportion to their sizes, 0 uniformly.
        Other arguments as :meth:`Distillation.train`; tasks are sampled without end, so pass ``num_steps``.
        """
        self._check_positional_order(scheduler, dataloader, num_epochs)
        if dataloader is not None:
            raise TypeError("MultiTaskDistillation.train() takes dataloaders={task: loader}, not dataloader=")
        if dataloaders is None:
            raise TypeError("MultiTaskDistillation.train() needs dataloaders={task: loader}")
        if set(dataloaders) != set(self.teachers):
            raise ValueError(
                f"dataloaders has tasks {sorted(dataloaders)} but the teachers are for {sorted(self.teachers)}"
            )
        model_args = {key: kwargs.pop(key) for key in list(kwargs) if key not in _TRAIN_OPTIONS}
        options = {key: kwargs.get(key) for key in _TRAIN_OPTIONS}
        return self._train(
            MultiTaskSource(dataloaders, tau),
            optimizer,
            scheduler,
            num_epochs,
            callback,
            num_steps=num_steps,
            model_args=model_args,
            **options,
        )

    def compute_loss(
        self, micro: MicroBatch, state: RunState, model_args: Mapping[str, Any], step: StepInfo
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        total, terms = super().compute_loss(micro, state, model_args, step)
        weight = self.task_weights[micro.task]
        return (total if weight == 1.0 else total * weight), terms


#: train() options of the base distiller that MultiTaskDistillation.train passes through
_TRAIN_OPTIONS = (
    "max_grad_norm",
    "batch_postprocessor",
    "scheduler_class",
    "scheduler_args",
    "resume_from",
    "num_train_epochs",
)
