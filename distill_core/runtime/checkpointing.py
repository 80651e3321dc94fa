"""Full-state checkpoints of a run: write them, find the one to resume from, restore it, refuse a mismatch.

What a checkpoint holds of the student is :mod:`distill_core.student_state`'s to say: the whole
``state_dict``, or for a peft student its trained weights with what they belong to.

A :class:`Checkpointer` is given what it saves: the runtime (ranks, sharding, the GradScaler), the
training and distillation configs (recorded, and compared on resume) and the
:class:`~distill_core.modules.Trainables` (the student and projections, one module). File names,
atomic writes and safe loading are :mod:`distill_core.checkpoint`'s; what an evaluation decides (best
student, early stopping) is :mod:`distill_core.evaluation`'s, which asks :meth:`Checkpointer.student_state`
for the student to keep.

Under torch.distributed rank 0 writes every file; all ranks take part in gathering a sharded (FSDP2)
model's full state, and meet at a barrier after each write so no rank reads a half-written file.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import TYPE_CHECKING, Any

import torch

from distill_core import checkpoint as ckpt
from distill_core.errors import CheckpointError
from distill_core.rng import capture_rng, restore_rng
from distill_core.student_state import (
    metadata_differences,
    peft_adapter_name,
    peft_metadata,
    student_file,
    trained_names,
)

if TYPE_CHECKING:
    from distill_core.config import DistillationConfig, TrainingConfig
    from distill_core.state import RunState
    from distill_core.modules import Trainables
    from distill_core.runtime import Runtime


class Checkpointer:
    """Saving and restoring a run's full training state: the trainables, optimizer, scheduler, run state, RNG."""

    def __init__(
        self,
        runtime: Runtime,
        train_config: TrainingConfig,
        distill_config: DistillationConfig | None,
        trainables: Trainables,
    ) -> None:
        self.runtime = runtime
        self.config = train_config
        self.distill_config = distill_config
        self.trainables = trainables

    # -- what is saved -------------------------------------------------------------------------
    def _configs_json(self) -> dict[str, str | None]:
        distill_config = self.distill_config
        return {
            "training": json.dumps(self.config.to_dict(), sort_keys=True),
            "distillation": None if distill_config is None else json.dumps(distill_config.to_dict(), sort_keys=True),
        }

    @staticmethod
    def _versions() -> dict[str, Any]:
        from distill_core import __version__
        from distill_core.registry import get_registry

        used = {c.plugin: {"distribution": c.distribution, "version": c.version} for c in get_registry().components()}
        # str(): torch.__version__ is a TorchVersion, which torch.load(weights_only=True) refuses
        return {"distill": str(__version__), "torch": str(torch.__version__), "plugins": used}

    def student_weights(self) -> dict[str, Any]:
        """What the full state holds of the student (gathered from all ranks when it is sharded; a collective).

        The whole ``state_dict``; for a peft student only what trains (:mod:`distill_core.student_state`).
        """
        student = self.trainables.student
        peft = peft_adapter_name(student) is not None
        if self.runtime.student_sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            # a peft student's frozen base is never gathered
            options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=peft)
            state = get_model_state_dict(student, options=options)
        else:
            state = student.state_dict()
        if not peft:
            return state
        trained = trained_names(student)
        return {name: tensor for name, tensor in state.items() if name in trained}

    def student_state(self, *, weights: dict[str, Any] | None = None) -> dict[str, Any]:
        """What ``gs*.pkl`` and ``best.pkl`` hold: the student's ``state_dict``, or a peft student's adapter file.

        :param weights: :meth:`student_weights`, when already gathered (else gathered here: a collective).
        """
        weights = self.student_weights() if weights is None else weights
        if peft_adapter_name(self.trainables.student) is None:
            return weights
        return student_file(self.trainables.student, weights)

    def _student_peft(self) -> dict[str, Any] | None:
        """A peft student's metadata for the full state (its frozen entries' names and shapes included), or None."""
        student = self.trainables.student
        if peft_adapter_name(student) is None:
            return None
        trained = trained_names(student)
        frozen = {name: tensor for name, tensor in student.state_dict().items() if name not in trained}
        return peft_metadata(student, frozen=frozen)

    def _optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        if self.runtime.student_sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            return get_optimizer_state_dict(self.trainables, optimizer, options=options)
        return optimizer.state_dict()

    def _full_state(self, state: RunState, optimizer: Any, scheduler: Any, student: dict[str, Any]) -> dict[str, Any]:
        runtime, trainables = self.runtime, self.trainables
        rngs = runtime.gather(capture_rng())
        epoch_rngs = runtime.gather(state.epoch_start_rng)
        run_state = state.state_dict()
        run_state["epoch_start_rng"] = epoch_rngs[0]
        student_peft = self._student_peft()
        return {
            "format": ckpt.FORMAT,
            "format_version": ckpt.FORMAT_VERSION,
            "step": state.global_step,
            "student": student,
            "projections": trainables.projections.state_dict(),
            "custom_projections": trainables.custom_projections.state_dict(),
            "optimizer": self._optimizer_state(optimizer),
            "optimizer_layout": "fsdp-full" if runtime.student_sharded else "torch",
            "scheduler": None if scheduler is None else scheduler.state_dict(),
            "scheduler_class": None if scheduler is None else type(scheduler).__qualname__,
            "optimizer_class": type(optimizer).__qualname__,
            "scaler": runtime.precision.state_dict(),
            "run_state": run_state,
            "rng": rngs[0],
            "world_size": runtime.world_size,
            "ranks": {"rng": rngs, "epoch_start_rng": epoch_rngs} if runtime.world_size > 1 else None,
            "config": self._configs_json(),
            "versions": self._versions(),
            "plugins": {},
            # only for a peft student, so every other student's checkpoint keeps its format exactly
            **({"student_peft": student_peft} if student_peft is not None else {}),
        }

    # -- writing -------------------------------------------------------------------------------
    def save(self, state: RunState, optimizer: Any, scheduler: Any) -> None:
        """Write ``gs{N}.pkl`` and the full state of step N, then prune old checkpoints."""
        runtime, output_dir, step = self.runtime, self.config.output_dir, state.global_step
        student = self.student_weights()
        full = self._full_state(state, optimizer, scheduler, student)
        if runtime.is_main:
            ckpt.save_atomic(self.student_state(weights=student), ckpt.student_path(output_dir, step))
            full_path = ckpt.state_path(output_dir, step)
            from distill_core.plugins import get_plugin_manager

            get_plugin_manager().hook.on_checkpoint(checkpoint=full, step=step, path=str(full_path))
            ckpt.save_atomic(full, full_path)
            ckpt.evaluation_path(full_path).unlink(missing_ok=True)  # an older run's record of this step
            if self.config.keep_last is not None:
                keep = set() if state.best_step is None else {state.best_step}
                ckpt.prune(output_dir, current_step=step, keep_last=self.config.keep_last, keep=keep)
        runtime.barrier()

    # -- resuming ------------------------------------------------------------------------------
    def resolve(self, resume_from: str | os.PathLike[str] | None) -> dict[str, Any] | None:
        """The full state to resume from: a path, or ``"latest"`` (the newest readable one), or None."""
        if resume_from is None:
            return None
        if not isinstance(resume_from, (str, os.PathLike)):
            raise TypeError(
                f"resume_from must be 'latest' or the path of a checkpoint file, got {type(resume_from).__name__} "
                f"{resume_from!r}"
            )
        if str(resume_from) != "latest":
            if os.path.isdir(resume_from):
                raise CheckpointError(
                    f"resume_from={os.fspath(resume_from)!r} is a folder; pass a checkpoint file in it "
                    f"({ckpt.STATE_DIR}/step-*.pt), or resume_from='latest' with that folder as output_dir"
                )
            return ckpt.load_state(resume_from)
        problems = []
        for _step, path in reversed(ckpt.list_states(self.config.output_dir)):
            try:
                return ckpt.load_state(path)
            except CheckpointError as exc:
                problems.append(str(exc))
                warnings.warn(f"{exc}; falling back to the previous checkpoint", UserWarning, stacklevel=4)
        if problems:
            raise CheckpointError("no readable checkpoint to resume from: " + "; ".join(problems))
        return None  # nothing saved yet: "latest" starts a fresh run

    def restore(self, saved: dict[str, Any], optimizer: Any, scheduler: Any, state: RunState) -> None:
        """Load a full-state checkpoint into the models, optimizer, scheduler, run state and RNG."""
        runtime, trainables = self.runtime, self.trainables
        self._check_compatible(saved, optimizer, scheduler)
        peft = peft_adapter_name(trainables.student) is not None
        if runtime.student_sharded:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_model_state_dict,
                set_optimizer_state_dict,
            )

            options = StateDictOptions(full_state_dict=True)
            student_options = StateDictOptions(full_state_dict=True, strict=not peft)
            set_model_state_dict(trainables.student, saved["student"], options=student_options)
        else:
            # a peft student's frozen base is not in the checkpoint: _check_compatible made sure that
            # the checkpoint holds exactly what trains
            trainables.student.load_state_dict(saved["student"], strict=not peft)
        trainables.projections.load_state_dict(saved["projections"])
        trainables.custom_projections.load_state_dict(saved["custom_projections"])
        if runtime.student_sharded:
            set_optimizer_state_dict(self.trainables, optimizer, saved["optimizer"], options=options)
        else:
            optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None:  # _check_compatible made sure the checkpoint holds its state
            scheduler.load_state_dict(saved["scheduler"])
        runtime.precision.load_state_dict(saved.get("scaler"))
        run_state = dict(saved["run_state"])
        if run_state.get("total_steps") != state.total_steps:
            raise CheckpointError(
                f"the checkpoint belongs to a run of {run_state.get('total_steps')} steps, but this train() call makes "
                f"{state.total_steps}; resume with the same num_epochs/num_steps, dataloader and accumulation"
            )
        ranks = saved.get("ranks")
        if ranks:
            run_state["epoch_start_rng"] = ranks["epoch_start_rng"][runtime.rank]
        state.load_state_dict(run_state)
        restore_rng(ranks["rng"][runtime.rank] if ranks else saved["rng"])

    def _check_compatible(self, saved: dict[str, Any], optimizer: Any, scheduler: Any) -> None:
        runtime, trainables = self.runtime, self.trainables
        saved_world = saved.get("world_size", 1)
        if saved_world != runtime.world_size:
            raise CheckpointError(
                f"the checkpoint was written by a run of world size {saved_world}, but this run has world size "
                f"{runtime.world_size}; resume with the same number of processes (the position in each rank's "
                f"share of the data cannot carry over to another split). The student weights alone are in "
                f"gs{saved.get('step')}.pkl for a new run"
            )
        layout = "fsdp-full" if runtime.student_sharded else "torch"
        saved_layout = saved.get("optimizer_layout", "torch")
        if saved_layout != layout:
            raise CheckpointError(
                f"the checkpoint's optimizer state is in {saved_layout!r} layout but this run needs {layout!r}: "
                f"resume with the same TrainingConfig.fsdp setting"
            )
        differences = []
        saved_training = json.loads(saved.get("config", {}).get("training") or "{}")
        accumulation = self.config.gradient_accumulation_steps
        if saved_training.get("gradient_accumulation_steps", accumulation) != accumulation:
            differences.append(
                f"training.gradient_accumulation_steps: checkpoint "
                f"{saved_training['gradient_accumulation_steps']!r}, now {accumulation!r}"
            )
        old_config = saved.get("config", {}).get("distillation")
        new_config = self._configs_json()["distillation"]
        if old_config != new_config:
            old = json.loads(old_config) if old_config else {}
            new = json.loads(new_config) if new_config else {}
            for key in sorted(set(old) | set(new)):
                if old.get(key) != new.get(key):
                    differences.append(f"distillation.{key}: checkpoint {old.get(key)!r}, now {new.get(key)!r}")
        saved_optimizer = saved.get("optimizer_class")  # absent in checkpoints written before it was recorded
        if saved_optimizer is not None and saved_optimizer != type(optimizer).__qualname__:
            # its state would not fit: torch fails later with a KeyError on a missing option ('momentum')
            differences.append(
                f"optimizer: checkpoint {saved_optimizer}, now {type(optimizer).__qualname__} (pass train() the same "
                f"optimizer class as the run that wrote the checkpoint, or start a new run without resume_from)"
            )
        scheduler_difference = self._scheduler_difference(saved, scheduler)
        if scheduler_difference:
            differences.append(scheduler_difference)
        differences += metadata_differences(saved.get("student_peft"), self._student_peft())
        for name, module in (
            ("student", trainables.student),
            ("projections", trainables.projections),
            ("custom_projections", trainables.custom_projections),
        ):
            old = saved.get(name, {})
            new = module.state_dict()
            if name == "student" and peft_adapter_name(module) is not None:
                trained = trained_names(module)
                new = {key: tensor for key, tensor in new.items() if key in trained}
            found = []
            for key in sorted(set(old) | set(new)):
                if key not in new:
                    found.append(f"{name}.{key}: in the checkpoint, not in this model")
                elif key not in old:
                    found.append(f"{name}.{key}: in this model, not in the checkpoint")
                elif tuple(old[key].shape) != tuple(new[key].shape):
                    found.append(
                        f"{name}.{key}: shape {tuple(old[key].shape)} in the checkpoint, {tuple(new[key].shape)} now"
                    )
            # a few per module, so a wider student does not hide the projections' differences
            differences += found[:10] + ([f"... and {len(found) - 10} more in {name}"] if len(found) > 10 else [])
        if differences:
            raise CheckpointError("the checkpoint does not match this run:\n  " + "\n  ".join(differences))

    @staticmethod
    def _scheduler_difference(saved: dict[str, Any], scheduler: Any) -> str | None:
        """Why the LR scheduler of this run cannot continue the checkpoint's, or None.

        Without this a scheduler passed to a run saved without one would silently start from its first
        step, and a run saved with one resumed without it would silently keep the LR frozen.
        """
        saved_state = saved.get("scheduler") is not None
        # checkpoints written before the class was recorded tell only whether a scheduler was there
        saved_class = saved.get("scheduler_class")
        this_class = None if scheduler is None else type(scheduler).__qualname__
        if saved_state == (scheduler is not None) and saved_class in (None, this_class):
            return None
        saved_name = saved_class or ("an LR scheduler" if saved_state else "no scheduler")
        return (
            f"scheduler: checkpoint {saved_name}, now {this_class or 'no scheduler'} (pass train() the same "
            f"scheduler= or scheduler_class= as the run that wrote the checkpoint, or start a new run without "
            f"resume_from, best in another output_dir)"
        )
