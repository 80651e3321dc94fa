"""The LR scheduler a ``train()`` call steps: checked at once, built when the run's step count is known.

``train()`` takes a scheduler in one of three forms:

- an instance, built before ``train()``: checked here (same optimizer, every parameter group), and
  stepped as it is;
- ``scheduler=factory``: a callable ``factory(optimizer)`` that builds one;
- ``scheduler_class=cls, scheduler_args={...}``: built as ``cls(optimizer, **scheduler_args)``.

A factory and a class are called only once the data is sharded (under torch.distributed each rank
reads its share) and the run's number of optimisation steps is known, so a schedule can be given
its real length in two ways:

- **by the step-count parameter** (:data:`STEP_COUNT_PARAMETERS`: transformers'
  ``num_training_steps``, torch's ``total_iters``, ``T_max``, ``total_steps``): when the callable
  has one that is required and not given, or given (or defaulting to) ``None`` or ``"auto"``, it
  receives the run's number of optimisation steps. A value you give is kept.
- **by measuring the data inside the factory**: while a factory runs, your DataLoader objects
  sample as this process reads them (:meth:`~distill_core.batches.BatchSource.users_loaders_as_read`),
  so ``len(loader)`` counts this process's batches per epoch, as one process would with the
  combined batch.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch

__all__ = ["AUTO", "STEP_COUNT_PARAMETERS", "build_lr_scheduler", "check_lr_scheduler", "step_count_arguments"]

#: the value of a step-count argument that asks for the run's number of optimisation steps
AUTO = "auto"

#: parameters that mean "the schedule's length in optimisation steps", by the libraries that use them:
#: transformers' ``get_*_schedule_with_warmup`` (``num_training_steps``), torch's ``LinearLR``,
#: ``ConstantLR`` and ``PolynomialLR`` (``total_iters``), ``CosineAnnealingLR`` (``T_max``) and
#: ``OneCycleLR`` (``total_steps``)
STEP_COUNT_PARAMETERS = ("num_training_steps", "total_iters", "T_max", "total_steps")


def _is_auto(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value == AUTO)


def step_count_arguments(
    build: Callable[..., Any], given: Mapping[str, Any], num_training_steps: int
) -> dict[str, int]:
    """Return the step-count arguments ``build`` should receive: ``{name: num_training_steps}``.

    A name of :data:`STEP_COUNT_PARAMETERS` is filled when ``given`` holds it as None or ``"auto"``,
    or when ``build`` takes it and ``given`` does not hold it while its default is missing (a
    required argument), None or ``"auto"``. Any other value, given or default, is kept.
    """
    filled = {name: num_training_steps for name in STEP_COUNT_PARAMETERS if name in given and _is_auto(given[name])}
    try:
        parameters = inspect.signature(build).parameters
    except (TypeError, ValueError):  # no signature to read (some builtins): only what was given
        return filled
    for name in STEP_COUNT_PARAMETERS:
        parameter = parameters.get(name)
        if name in given or parameter is None:
            continue
        if parameter.kind not in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            continue
        if parameter.default is inspect.Parameter.empty or _is_auto(parameter.default):
            filled[name] = num_training_steps
    return filled


def check_lr_scheduler(
    optimizer: torch.optim.Optimizer, scheduler: Any, scheduler_class: Any, scheduler_args: Any
) -> None:
    """Raise if the scheduler arguments of ``train()`` cannot work, before anything is set up.

    Called after distill added the projections' parameter groups to ``optimizer``.
    """
    if scheduler_class is not None:
        if scheduler is not None:
            raise TypeError("pass scheduler or scheduler_class (+ scheduler_args), not both")
        if not callable(scheduler_class):
            raise TypeError(
                f"scheduler_class must be callable as scheduler_class(optimizer, **scheduler_args), "
                f"got {scheduler_class!r}"
            )
        if scheduler_args is not None and not isinstance(scheduler_args, Mapping):
            raise TypeError(f"scheduler_args must be a dict of keyword arguments, got {type(scheduler_args).__name__}")
        return
    if scheduler is None:
        return
    if _is_instance(scheduler):
        if scheduler.optimizer is not optimizer:
            raise ValueError("the scheduler was built for another optimizer than the one passed to train()")
        seen = len(getattr(scheduler, "base_lrs", optimizer.param_groups))
        if seen < len(optimizer.param_groups):
            # torch's schedulers keep one entry per group from their construction: such a
            # scheduler either fails at its first step or leaves the projections unscheduled
            raise ValueError(
                f"the scheduler was built before distill added {len(optimizer.param_groups) - seen} projection "
                f"parameter group(s) to the optimizer, so it cannot schedule their learning rate; pass "
                f"scheduler=lambda opt: YourScheduler(opt, ...) or scheduler_class=..., scheduler_args=... so "
                f"distill builds it after adding the groups"
            )
        return
    if not callable(scheduler):
        raise TypeError(f"scheduler must be an LR scheduler or a callable taking the optimizer, got {scheduler!r}")


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scheduler_class: Any,
    scheduler_args: Mapping[str, Any] | None,
    num_training_steps: int,
) -> Any:
    """Return the scheduler to step: the instance as given, or the factory's or class's, built now.

    ``num_training_steps``: the run's number of optimisation steps (what the schedule must last),
    given to the step-count parameters :func:`step_count_arguments` selects.
    """
    if scheduler_class is not None:
        arguments = dict(scheduler_args or {})
        arguments.update(step_count_arguments(scheduler_class, arguments, num_training_steps))
        return scheduler_class(optimizer, **arguments)
    if scheduler is None or _is_instance(scheduler):
        return scheduler
    return scheduler(optimizer, **step_count_arguments(scheduler, {}, num_training_steps))


def _is_instance(scheduler: Any) -> bool:
    """A scheduler already built (torch's, transformers', or anything with ``step`` and ``optimizer``)."""
    return hasattr(scheduler, "step") and hasattr(scheduler, "optimizer")
