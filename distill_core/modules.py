"""Modules as distill holds them: the one unwrap helper, and the trainable modules as one module.

- :func:`unwrap` strips every wrapper distill or a user may put around a model: ``DataParallel``,
  ``DistributedDataParallel`` (``.module``) and ``torch.compile``'s ``OptimizedModule``
  (``._orig_mod``), in any nesting. FSDP2's ``fully_shard`` wraps nothing (it changes the module's
  class in place), so a sharded model is its own unwrapped self.
- :class:`Trainables` is the student with the projections of the intermediate and custom matches,
  as one module: the runtime prepares it, checkpoints save and restore it, and a sharded optimizer
  state has one name space (``student.*``, ``projections.*``, ``custom_projections.*``).
"""

from __future__ import annotations

from torch import nn

__all__ = ["Trainables", "unwrap"]


def unwrap(model: nn.Module) -> nn.Module:
    """Return the model inside DataParallel / DistributedDataParallel / ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


class Trainables(nn.Module):
    """What trains: the student (unwrapped) and the projections of the intermediate and custom matches.

    The runtime returns wrapped versions of the student for the forward pass; this module always
    holds the plain modules, so its ``state_dict`` is the same in one process, under DDP and (full
    state) under FSDP2.
    """

    def __init__(self, student: nn.Module, projections: nn.ModuleList, custom_projections: nn.ModuleList) -> None:
        super().__init__()
        self.student = unwrap(student)
        self.projections = projections
        self.custom_projections = custom_projections

    def parts(self) -> list[nn.Module]:
        """Student, projections and custom projections (what is clipped and set to train mode)."""
        return [self.student, self.projections, self.custom_projections]
