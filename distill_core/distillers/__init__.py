"""The five distillers; they share one loop (:mod:`distill_core.loop`) and differ in their loss."""

from distill_core.distillers.base import BaseDistiller
from distill_core.distillers.basic import BasicTraining
from distill_core.distillers.distillation import BasicDistillation, Distillation
from distill_core.terms.kd import probability_shift
from distill_core.distillers.multi import (
    BasicMultiTeacherDistillation,
    MultiTaskDistillation,
    MultiTeacherDistillation,
)

# TextBrewer's class names, so code written for TextBrewer imports unchanged
#: TextBrewer's name for :class:`BasicTraining` (trains one model on its own losses)
BasicTrainer = BasicTraining
#: TextBrewer's name for :class:`BasicDistillation` (logits KD + hard labels)
BasicDistiller = BasicDistillation
#: TextBrewer's name for the full distiller
GeneralDistiller = Distillation
#: TextBrewer's name for :class:`MultiTeacherDistillation`
MultiTeacherDistiller = MultiTeacherDistillation
#: TextBrewer's name for :class:`MultiTaskDistillation`
MultiTaskDistiller = MultiTaskDistillation

__all__ = [
    "BaseDistiller",
    "BasicDistillation",
    "BasicDistiller",
    "BasicMultiTeacherDistillation",
    "BasicTrainer",
    "BasicTraining",
    "Distillation",
    "GeneralDistiller",
    "MultiTaskDistillation",
    "MultiTaskDistiller",
    "MultiTeacherDistillation",
    "MultiTeacherDistiller",
    "probability_shift",
]
