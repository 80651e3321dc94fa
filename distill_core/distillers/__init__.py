"""The five distillers; they share one loop (:mod:`distill_core.loop`) and differ in their loss."""

from distill_core.distillers.base import BaseDistiller
from distill_core.distillers.basic import BasicTraining
from distill_core.distillers.distillation import BasicDistillation, Distillation
from distill_core.distillers.kd_term import probability_shift
from distill_core.distillers.multi import (
    BasicMultiTeacherDistillation,
    MultiTaskDistillation,
    MultiTeacherDistillation,
)

#: TextBrewer's name for the full distiller
GeneralDistiller = Distillation

__all__ = [
    "BaseDistiller",
    "BasicDistillation",
    "BasicMultiTeacherDistillation",
    "BasicTraining",
    "Distillation",
    "GeneralDistiller",
    "MultiTaskDistillation",
    "MultiTeacherDistillation",
    "probability_shift",
]
