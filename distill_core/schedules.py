"""Temperature and loss-weight schedules (a closed set, validated by name in the config).

Temperature schedulers take the detached logits and return a float or a per-example tensor (B,):

- ``constant``: the base temperature.
- ``flsw`` (beta, gamma): ``w = (1 - cos(z_S, z_T))^gamma``, ``tau = T + beta·(mean(w) − w)``
  (Li et al., 2021, "Dynamic knowledge distillation"; per-example temperature).
- ``cwsm`` (beta): ``w = 1 / max_c softmax(z_S)_c``, ``tau = T + beta·(mean(w) − w)`` (same paper).

Weight schedulers map a base weight and the training progress ``p = step / total_steps`` to a
weight: ``linear_growth`` gives ``w·p``, ``linear_decay`` gives ``w·(1 − p)``.
"""

from __future__ import annotations

from typing import Callable

import torch
from pydantic import BaseModel, ConfigDict, Field

_EPS = 1e-4


class _NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FlswParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    beta: float = 1.0
    gamma: float = Field(1.0, gt=0)


class CwsmParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    beta: float = 1.0


TemperatureFn = Callable[[torch.Tensor, torch.Tensor, float], "float | torch.Tensor"]
WeightFn = Callable[[float, float], float]


def _constant_temperature(params: BaseModel) -> TemperatureFn:
    def schedule(logits_S: torch.Tensor, logits_T: torch.Tensor, base: float) -> float:
        return base

    return schedule


def _flsw_temperature(params: FlswParams) -> TemperatureFn:
    beta, gamma = params.beta, params.gamma

    def schedule(logits_S: torch.Tensor, logits_T: torch.Tensor, base: float) -> torch.Tensor:
        with torch.no_grad():
            s = logits_S.detach().float()
            t = logits_T.detach().float()
            s = s / (s.norm(dim=-1, keepdim=True) + _EPS)
            t = t / (t.norm(dim=-1, keepdim=True) + _EPS)
            w = (1 - (s * t).sum(dim=-1)).clamp_min(0).pow(gamma)
            return base + (w.mean() - w) * beta

    return schedule


def _cwsm_temperature(params: CwsmParams) -> TemperatureFn:
    beta = params.beta

    def schedule(logits_S: torch.Tensor, logits_T: torch.Tensor, base: float) -> torch.Tensor:
        with torch.no_grad():
            confidence = torch.softmax(logits_S.detach().float(), dim=-1).amax(dim=-1)
            w = 1.0 / (confidence + _EPS)
            return base + (w.mean() - w) * beta

    return schedule


#: name -> (params model, builder). ``none`` is the seed's spelling of ``constant``.
TEMPERATURE_SCHEDULERS: dict[str, tuple[type[BaseModel], Callable[..., TemperatureFn]]] = {
    "constant": (_NoParams, _constant_temperature),
    "none": (_NoParams, _constant_temperature),
    "flsw": (FlswParams, _flsw_temperature),
    "cwsm": (CwsmParams, _cwsm_temperature),
}

WEIGHT_SCHEDULERS: dict[str, WeightFn] = {
    "constant": lambda weight, progress: weight,
    "none": lambda weight, progress: weight,
    "linear_growth": lambda weight, progress: weight * progress,
    "linear_decay": lambda weight, progress: weight * (1.0 - progress),
}


def build_temperature_scheduler(name: str, params: dict | None = None) -> TemperatureFn:
    """Return the temperature schedule ``name`` with validated ``params``."""
    params_model, builder = TEMPERATURE_SCHEDULERS[name]
    return builder(params_model.model_validate(params or {}))


def weight_at(name: str, base_weight: float, progress: float) -> float:
    """Return the weight of schedule ``name`` at training progress ``progress`` in [0, 1]."""
    return WEIGHT_SCHEDULERS[name](base_weight, min(max(progress, 0.0), 1.0))
