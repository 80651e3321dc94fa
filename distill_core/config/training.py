"""``TrainingConfig``: how to train (accumulation, checkpoint cadence, logging, precision, device)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from distill_core.config.common import SerializableConfig


class TrainingConfig(SerializableConfig):
    """How to train: accumulation, checkpoint cadence, logging, device.

    Checkpoints: in epoch mode (``ckpt_steps`` unset) a checkpoint is written ``ckpt_frequency``
    times per epoch, every ``ckpt_epoch_frequency`` epochs; in step mode every ``ckpt_steps`` steps.
    The callback is called at each checkpoint, or every ``eval_steps`` steps (and at the end) when
    that is set. It may return a metric: the best student is kept in ``best.pkl``
    (``best_metric_mode``) and training stops after ``early_stopping_patience`` evaluations without
    improvement.
    """

    file_section: ClassVar[str] = "training"

    gradient_accumulation_steps: int = Field(1, ge=1)
    ckpt_frequency: int = Field(1, ge=1)
    ckpt_epoch_frequency: int = Field(1, ge=1)
    ckpt_steps: int | None = Field(None, ge=1)
    log_dir: str | None = None
    output_dir: str = "./saved_models"
    overwrite_output_dir: bool = Field(
        False,
        strict=True,
        description="a new run (no resume_from) in an output_dir holding a previous run's checkpoints deletes "
        "them first (gs*.pkl, checkpoints/step-*.pt and step-*.eval.json, best.pkl, best.json; other files "
        "stay); False: such a run is refused at setup. A run that resumes ignores it",
    )
    device: str | None = Field(
        None, description="torch device; None picks cuda (cuda:<local rank> under torchrun) when available"
    )
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(
        "no",
        description="autocast both models to float16 (with a GradScaler) or bfloat16, on CPU or CUDA; loss "
        "terms stay float32",
    )
    fp16: bool = Field(False, description="the seed API's switch: same as mixed_precision='fp16' (CUDA)")
    fp16_opt_level: str = Field("O1", description="accepted for the seed API; only O1 (autocast) exists")
    data_parallel: bool = Field(False, description="wrap models in torch.nn.DataParallel (one process, several GPUs)")
    local_rank: int = Field(
        -1, ge=-1, description="rank of this process on its machine; -1: read LOCAL_RANK under torchrun"
    )
    fsdp: list[Literal["student", "teachers"]] = Field(
        default_factory=list,
        description="under torch.distributed, shard these models with FSDP2 (fully_shard per transformer "
        "block) instead of replicating them; the student is otherwise wrapped in DistributedDataParallel",
    )
    find_unused_parameters: bool | None = Field(
        None,
        description="DistributedDataParallel's find_unused_parameters; None: only when a step may leave part of "
        "the student unused (multi-task)",
    )
    distributed_sampler: Literal["auto", "off"] = Field(
        "auto",
        description="under torch.distributed, give a DataLoader without one a DistributedSampler ('auto'), or "
        "read each rank's data as given ('off')",
    )
    callback_on_all_ranks: bool = Field(
        False, description="run the callback on every rank, not rank 0 alone (always so for an FSDP student)"
    )
    eval_steps: int | None = Field(
        None,
        ge=1,
        description="call the callback every this many optimisation steps and at the end of training, "
        "independently of checkpoints; None: at each checkpoint",
    )
    log_steps: int = Field(10, ge=1, description="write scalars every this many optimisation steps")
    progress_bar: bool = True
    keep_last: int | None = Field(
        None, ge=1, description="keep the newest N checkpoints (gs*.pkl and full state) and the best"
    )
    best_metric_mode: Literal["max", "min"] = Field(
        "max", description="is a larger ('max') or smaller ('min') callback metric better"
    )
    early_stopping_patience: int | None = Field(
        None, ge=1, description="stop after this many evaluations in a row without a better metric"
    )
    nonfinite_policy: Literal["raise", "skip"] = Field(
        "raise",
        description="on a NaN/inf loss, or a step after the first in which no token counts: raise "
        "(NonFiniteLossError, NoValidTokensError), or skip the update and count it",
    )

    @field_validator("device")
    @classmethod
    def _valid_device(cls, device: str | None) -> str | None:
        if device is not None:
            import torch

            try:
                torch.device(device)
            except (RuntimeError, ValueError) as exc:
                raise ValueError(f"invalid torch device {device!r} ({exc}); use e.g. 'cpu' or 'cuda:0'") from None
        return device

    @field_validator("fp16_opt_level")
    @classmethod
    def _opt_level(cls, level: str) -> str:
        if level != "O1":
            raise ValueError(f"only fp16_opt_level 'O1' (torch.autocast) is supported, got {level!r}")
        return level

    @field_validator("fsdp")
    @classmethod
    def _unique_fsdp(cls, models: list[str]) -> list[str]:
        if len(set(models)) != len(models):
            raise ValueError(f"fsdp names a model twice: {models}")
        return models

    @model_validator(mode="after")
    def _one_precision(self) -> TrainingConfig:
        if self.fp16 and self.mixed_precision not in ("no", "fp16"):
            raise ValueError(
                f"fp16=True (the seed API's switch) conflicts with mixed_precision={self.mixed_precision!r}; "
                f"set only mixed_precision"
            )
        return self

    def precision_mode(self) -> str:
        """The effective precision: ``mixed_precision``, or "fp16" when the seed's ``fp16`` is set."""
        return "fp16" if self.fp16 else self.mixed_precision
