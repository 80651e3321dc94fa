"""Checkpointing for distillers: write (with best/early stop/pruning), resume, compatibility check.

A mixin of :class:`~distill_core.distillers.base.BaseDistiller`; it reads the distiller's models,
configs and scaler, and the file formats live in :mod:`distill_core.checkpoint`.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from typing import Any

import torch

from distill_core import checkpoint as ckpt
from distill_core.errors import CheckpointError
from distill_core.loop import RunState
from distill_core.tracking import Tracker


class CheckpointMixin:
    """Saving and restoring a distiller's full training state."""

    def _configs_json(self) -> dict[str, str | None]:
        return {
            "training": json.dumps(self.train_config.to_dict(), sort_keys=True),
            "distillation": None
            if self.distill_config is None
            else json.dumps(self.distill_config.to_dict(), sort_keys=True),
        }

    def _versions(self) -> dict[str, Any]:
        from distill_core import __version__
        from distill_core.registry import get_registry

        registry = get_registry()
        used = {c.plugin: {"distribution": c.distribution, "version": c.version} for c in registry.components()}
        # str(): torch.__version__ is a TorchVersion, which torch.load(weights_only=True) refuses
        return {"distill": str(__version__), "torch": str(torch.__version__), "plugins": used}

    def _full_state(self, state: RunState, optimizer: Any, scheduler: Any) -> dict[str, Any]:
        return {
            "format": ckpt.FORMAT,
            "format_version": ckpt.FORMAT_VERSION,
            "step": state.global_step,
            "student": self.student.state_dict(),
            "projections": self.projections.state_dict(),
            "custom_projections": self.custom_projections.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": None if scheduler is None else scheduler.state_dict(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "run_state": state.state_dict(),
            "rng": ckpt.capture_rng(),
            "config": self._configs_json(),
            "versions": self._versions(),
            "plugins": {},
        }

    def checkpoint(
        self, state: RunState, optimizer: Any, scheduler: Any, callback: Callable[..., Any] | None, tracker: Tracker
    ) -> bool:
        """Write the student file, call the callback (if given), write the full state, prune.

        The callback runs before the full state is written so that its metric (best, patience) is part
        of the saved run state. Returns True to stop training (early stopping).
        """
        config, output_dir, step = self.train_config, self.train_config.output_dir, state.global_step
        if self.is_main:
            ckpt.save_atomic(self.student.state_dict(), ckpt.student_path(output_dir, step))
        stop = self.evaluate(state, callback, tracker) if callback is not None else False
        if self.is_main:
            full = self._full_state(state, optimizer, scheduler)
            full_path = ckpt.state_path(output_dir, step)
            from distill_core.plugins import get_plugin_manager

            get_plugin_manager().hook.on_checkpoint(checkpoint=full, step=step, path=str(full_path))
            ckpt.save_atomic(full, full_path)
            if config.keep_last is not None:
                keep = set() if state.best_step is None else {state.best_step}
                ckpt.prune(output_dir, current_step=step, keep_last=config.keep_last, keep=keep)
        return stop

    def evaluate(self, state: RunState, callback: Callable[..., Any], tracker: Tracker) -> bool:
        """Call the callback on the student (in eval mode), log its metric, keep the best; True: stop early.

        The callback must not change the run's randomness (a resumed run would diverge), so the RNG
        states are restored after it.
        """
        config, step = self.train_config, state.global_step
        rng = ckpt.capture_rng()
        student = self.model_S
        student.eval()
        try:
            result = callback(model=self.student, step=step)
        finally:
            student.train()
            ckpt.restore_rng(rng)
        metric = ckpt.metric_from(result)
        if metric is None:
            return False
        tracker.scalars({"eval/metric": metric}, step)
        if ckpt.is_better(metric, state.best_metric, config.best_metric_mode):
            state.best_metric, state.best_step, state.evals_without_improvement = metric, step, 0
            if self.is_main:
                ckpt.save_best(self.student, config.output_dir, step=step, metric=metric, mode=config.best_metric_mode)
        else:
            state.evals_without_improvement += 1
        patience = config.early_stopping_patience
        state.stopped_early = patience is not None and state.evals_without_improvement >= patience
        return state.stopped_early

    def _resolve_resume(self, resume_from: str | os.PathLike[str] | None) -> dict[str, Any] | None:
        if resume_from is None:
            return None
        if str(resume_from) != "latest":
            return ckpt.load_state(resume_from)
        candidates = ckpt.list_states(self.train_config.output_dir)
        problems = []
        for _step, path in reversed(candidates):
            try:
                state = ckpt.load_state(path)
            except CheckpointError as exc:
                problems.append(str(exc))
                warnings.warn(f"{exc}; falling back to the previous checkpoint", UserWarning, stacklevel=3)
                continue
            return state
        if problems:
            raise CheckpointError("no readable checkpoint to resume from: " + "; ".join(problems))
        return None  # nothing saved yet: "latest" starts a fresh run

    def restore_checkpoint(self, state_dict: dict[str, Any], optimizer: Any, scheduler: Any, state: RunState) -> None:
        """Load a full-state checkpoint into the models, optimizer, scheduler and run state."""
        self._check_compatible(state_dict)
        self.student.load_state_dict(state_dict["student"])
        self.projections.load_state_dict(state_dict["projections"])
        self.custom_projections.load_state_dict(state_dict["custom_projections"])
        optimizer.load_state_dict(state_dict["optimizer"])
        if scheduler is not None and state_dict.get("scheduler") is not None:
            scheduler.load_state_dict(state_dict["scheduler"])
        if self.scaler is not None and state_dict.get("scaler"):
            self.scaler.load_state_dict(state_dict["scaler"])
        saved = dict(state_dict["run_state"])
        if saved.get("total_steps") != state.total_steps:
            raise CheckpointError(
                f"the checkpoint belongs to a run of {saved.get('total_steps')} steps, but this train() call makes "
                f"{state.total_steps}; resume with the same num_epochs/num_steps, dataloader and accumulation"
            )
        state.load_state_dict(saved)
        ckpt.restore_rng(state_dict["rng"])

    def _check_compatible(self, state_dict: dict[str, Any]) -> None:
        differences = []
        saved_training = json.loads(state_dict.get("config", {}).get("training") or "{}")
        accumulation = self.train_config.gradient_accumulation_steps
        if saved_training.get("gradient_accumulation_steps", accumulation) != accumulation:
            differences.append(
                f"training.gradient_accumulation_steps: checkpoint "
                f"{saved_training['gradient_accumulation_steps']!r}, now {accumulation!r}"
            )
        saved = state_dict.get("config", {}).get("distillation")
        current = self._configs_json()["distillation"]
        if saved != current:
            old = json.loads(saved) if saved else {}
            new = json.loads(current) if current else {}
            for key in sorted(set(old) | set(new)):
                if old.get(key) != new.get(key):
                    differences.append(f"distillation.{key}: checkpoint {old.get(key)!r}, now {new.get(key)!r}")
        for name, module in (
            ("student", self.student),
            ("projections", self.projections),
            ("custom_projections", self.custom_projections),
        ):
            old = state_dict.get(name, {})
            new = module.state_dict()
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
