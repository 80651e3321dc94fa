"""The public API is the one users wrote against: names, constructor and train() signatures.

The expected signatures were recorded from commit 9fa3270 (before the inside was redesigned into
one distillation composed with a teacher routing, issue 21); a change here is a change of the
public contract and must be deliberate.
"""

from __future__ import annotations

import inspect

import pytest

import distill_core
from distill_core import distillers

EXPORTED = [
    'AdaptorError',
    'BasicDistillation',
    'BasicDistiller',
    'BasicMultiTeacherDistillation',
    'BasicTrainer',
    'BasicTraining',
    'CheckpointError',
    'ComponentInfo',
    'CustomMatch',
    'DistillConfig',
    'DistillError',
    'Distillation',
    'DistillationConfig',
    'DuplicateComponentError',
    'GeneralDistiller',
    'IntermediateMatch',
    'MultiTaskDistillation',
    'MultiTaskDistiller',
    'MultiTeacherDistillation',
    'MultiTeacherDistiller',
    'NonFiniteLossError',
    'PROJECT_NAME',
    'PluginError',
    'PluginLoadError',
    'ProjectionSpec',
    'ShapeMismatchError',
    'TrainConfig',
    'TrainingConfig',
    'UnknownComponentError',
    '__version__',
    'auto_adaptor',
    'configure_plugins',
    'get_loss',
    'get_plugin_manager',
    'get_projection',
    'get_registry',
    'hookimpl',
    'hookspec',
    'list_components',
]

SIGNATURES = {
    ('BasicTraining', '__init__'): (
        "(self, train_config: 'TrainingConfig', model: 'nn.Module', adaptor: 'Adaptor | None') -> 'None'"
    ),
    ('BasicTraining', 'train'): (
        "(self, optimizer: 'torch.optim.Optimizer', scheduler: 'Any' = None, dataloader: 'Any' = None, "
        "num_epochs: 'int | None' = None, callback: 'Callable[..., Any] | None' = None, *, "
        "num_steps: 'int | None' = None, max_grad_norm: 'float | None' = None, "
        "batch_postprocessor: 'Callable[[Any], Any] | None' = None, scheduler_class: 'Any' = None, "
        "scheduler_args: 'dict[str, Any] | None' = None, resume_from: 'str | os.PathLike[str] | None' = None, "
        "num_train_epochs: 'int | None' = None, **args: 'Any') -> 'RunState'"
    ),
    ('BasicTraining', 'build_teacher_cache'): None,
    ('BasicDistillation', '__init__'): (
        "(self, train_config: 'TrainingConfig', distill_config: 'DistillationConfig', model_T: 'nn.Module', "
        "model_S: 'nn.Module', adaptor_T: 'Adaptor | None', adaptor_S: 'Adaptor | None', "
        "**tokenizers: 'Any') -> 'None'"
    ),
    ('BasicDistillation', 'train'): (
        "(self, optimizer: 'torch.optim.Optimizer', scheduler: 'Any' = None, dataloader: 'Any' = None, "
        "num_epochs: 'int | None' = None, callback: 'Callable[..., Any] | None' = None, *, "
        "num_steps: 'int | None' = None, max_grad_norm: 'float | None' = None, "
        "batch_postprocessor: 'Callable[[Any], Any] | None' = None, scheduler_class: 'Any' = None, "
        "scheduler_args: 'dict[str, Any] | None' = None, resume_from: 'str | os.PathLike[str] | None' = None, "
        "num_train_epochs: 'int | None' = None, **args: 'Any') -> 'RunState'"
    ),
    ('BasicDistillation', 'build_teacher_cache'): (
        "(self, dataloader: 'Any' = None, *, dataloaders: 'Mapping[str, Any] | None' = None, "
        "batch_postprocessor: 'Callable[[Any], Any] | None' = None, **model_args: 'Any') -> 'dict[str, Any]'"
    ),
    ('Distillation', '__init__'): (
        "(self, train_config: 'TrainingConfig', distill_config: 'DistillationConfig', model_T: 'nn.Module', "
        "model_S: 'nn.Module', adaptor_T: 'Adaptor | None', adaptor_S: 'Adaptor | None', "
        "custom_matches: 'Sequence[dict[str, Any] | CustomMatch] | None' = None, *, tokenizer_T: 'Any' = None, "
        "tokenizer_S: 'Any' = None) -> 'None'"
    ),
    ('Distillation', 'train'): (
        "(self, optimizer: 'torch.optim.Optimizer', scheduler: 'Any' = None, dataloader: 'Any' = None, "
        "num_epochs: 'int | None' = None, callback: 'Callable[..., Any] | None' = None, *, "
        "num_steps: 'int | None' = None, max_grad_norm: 'float | None' = None, "
        "batch_postprocessor: 'Callable[[Any], Any] | None' = None, scheduler_class: 'Any' = None, "
        "scheduler_args: 'dict[str, Any] | None' = None, resume_from: 'str | os.PathLike[str] | None' = None, "
        "num_train_epochs: 'int | None' = None, **args: 'Any') -> 'RunState'"
    ),
    ('Distillation', 'build_teacher_cache'): (
        "(self, dataloader: 'Any' = None, *, dataloaders: 'Mapping[str, Any] | None' = None, "
        "batch_postprocessor: 'Callable[[Any], Any] | None' = None, **model_args: 'Any') -> 'dict[str, Any]'"
    ),
    ('MultiTeacherDistillation', '__init__'): (
        "(self, train_config: 'TrainingConfig', distill_config: 'DistillationConfig', "
        "model_T: 'Sequence[nn.Module]', model_S: 'nn.Module', "
        "adaptor_T: 'Adaptor | Sequence[Adaptor | None] | None', adaptor_S: 'Adaptor | None', "
        "teacher_weights: 'Sequence[float] | None' = None, custom_matches: 'Sequence[dict[str, "
        "Any] | CustomMatch] | None' = None, *, tokenizer_T: 'Any' = None, tokenizer_S: 'Any' = None) -> 'None'"
    ),
    ('MultiTeacherDistillation', 'train'): (
        "(self, optimizer: 'torch.optim.Optimizer', scheduler: 'Any' = None, dataloader: 'Any' = None, "
        "num_epochs: 'int | None' = None, callback: 'Callable[..., Any] | None' = None, *, "
        "num_steps: 'int | None' = None, max_grad_norm: 'float | None' = None, "
        "batch_postprocessor: 'Callable[[Any], Any] | None' = None, scheduler_class: 'Any' = None, "
        "scheduler_args: 'dict[str, Any] | None' = None, resume_from: 'str | os.PathLike[str] | None' = None, "
        "num_train_epochs: 'int | None' = None, **args: 'Any') -> 'RunState'"
    ),
    ('MultiTeacherDistillation', 'build_teacher_cache'): (
        "(self, dataloader: 'Any' = None, *, dataloaders: 'Mapping[str, Any] | None' = None, "
        "batch_postprocessor: 'Callable[[Any], Any] | None' = None, **model_args: 'Any') -> 'dict[str, Any]'"
    ),
    ('MultiTaskDistillation', '__init__'): (
        "(self, train_config: 'TrainingConfig', distill_config: 'DistillationConfig', model_T: 'Mapping[str, "
        "nn.Module]', model_S: 'nn.Module', adaptor_T: 'Mapping[str, Adaptor | None]', "
        "adaptor_S: 'Mapping[str, Adaptor | None]', task_weights: 'Mapping[str, "
        "float] | None' = None) -> 'None'"
    ),
    ('MultiTaskDistillation', 'train'): (
        "(self, optimizer: 'torch.optim.Optimizer', scheduler: 'Any' = None, dataloader: 'Any' = None, "
        "num_epochs: 'int | None' = None, callback: 'Any' = None, *, dataloaders: 'Mapping[str, "
        "Any] | None' = None, tau: 'float' = 1.0, num_steps: 'int | None' = None, "
        "**kwargs: 'Any') -> 'RunState'"
    ),
    ('MultiTaskDistillation', 'build_teacher_cache'): (
        "(self, dataloader: 'Any' = None, *, dataloaders: 'Mapping[str, Any] | None' = None, "
        "batch_postprocessor: 'Callable[[Any], Any] | None' = None, **model_args: 'Any') -> 'dict[str, Any]'"
    ),
    ('BasicTrainer', '__init__'): (
        "(self, train_config: 'TrainingConfig', model: 'nn.Module', adaptor: 'Adaptor | None') -> 'None'"
    ),
    ('BasicTrainer', 'train'): (
        "(self, optimizer: 'torch.optim.Optimizer', scheduler: 'Any' = None, dataloader: 'Any' = None, "
        "num_epochs: 'int | None' = None, callback: 'Callable[..., Any] | None' = None, *, "
        "num_steps: 'int | None' = None, max_grad_norm: 'float | None' = None, "
        "batch_postprocessor: 'Callable[[Any], Any] | None' = None, scheduler_class: 'Any' = None, "
        "scheduler_args: 'dict[str, Any] | None' = None, resume_from: 'str | os.PathLike[str] | None' = None, "
        "num_train_epochs: 'int | None' = None, **args: 'Any') -> 'RunState'"
    ),
    ('BasicTrainer', 'build_teacher_cache'): None,
    ('BasicDistiller', '__init__'): (
        "(self, train_config: 'TrainingConfig', distill_config: 'DistillationConfig', model_T: 'nn.Module', "
        "model_S: 'nn.Module', adaptor_T: 'Adaptor | None', adaptor_S: 'Adaptor | None', "
        "**tokenizers: 'Any') -> 'None'"
    ),
    ('BasicDistiller', 'train'): (
        "(self, optimizer: 'torch.optim.Optimizer', scheduler: 'Any' = None, dataloader: 'Any' = None, "
        "num_epochs: 'int | None' = None, callback: 'Callable[..., Any] | None' = None, *, "
        "num_steps: 'int | None' = None, max_grad_norm: 'float | None' = None, "
        "batch_postprocessor: 'Callable[[Any], Any] | None' = None, scheduler_class: 'Any' = None, "
        "scheduler_args: 'dict[str, Any] | None' = None, resume_from: 'str | os.PathLike[str] | None' = None, "
        "num_train_epochs: 'int | None' = None, **args: 'Any') -> 'RunState'"
    ),
    ('BasicDistiller', 'build_teacher_cache'): (
        "(self, dataloader: 'Any' = None, *, dataloaders: 'Mapping[str, Any] | None' = None, "
        "batch_postprocessor: 'Callable[[Any], Any] | None' = None, **model_args: 'Any') -> 'dict[str, Any]'"
    ),
    ('GeneralDistiller', '__init__'): (
        "(self, train_config: 'TrainingConfig', distill_config: 'DistillationConfig', model_T: 'nn.Module', "
        "model_S: 'nn.Module', adaptor_T: 'Adaptor | None', adaptor_S: 'Adaptor | None', "
        "custom_matches: 'Sequence[dict[str, Any] | CustomMatch] | None' = None, *, tokenizer_T: 'Any' = None, "
        "tokenizer_S: 'Any' = None) -> 'None'"
    ),
    ('GeneralDistiller', 'train'): (
        "(self, optimizer: 'torch.optim.Optimizer', scheduler: 'Any' = None, dataloader: 'Any' = None, "
        "num_epochs: 'int | None' = None, callback: 'Callable[..., Any] | None' = None, *, "
        "num_steps: 'int | None' = None, max_grad_norm: 'float | None' = None, "
        "batch_postprocessor: 'Callable[[Any], Any] | None' = None, scheduler_class: 'Any' = None, "
        "scheduler_args: 'dict[str, Any] | None' = None, resume_from: 'str | os.PathLike[str] | None' = None, "
        "num_train_epochs: 'int | None' = None, **args: 'Any') -> 'RunState'"
    ),
    ('GeneralDistiller', 'build_teacher_cache'): (
        "(self, dataloader: 'Any' = None, *, dataloaders: 'Mapping[str, Any] | None' = None, "
        "batch_postprocessor: 'Callable[[Any], Any] | None' = None, **model_args: 'Any') -> 'dict[str, Any]'"
    ),
    ('MultiTeacherDistiller', '__init__'): (
        "(self, train_config: 'TrainingConfig', distill_config: 'DistillationConfig', "
        "model_T: 'Sequence[nn.Module]', model_S: 'nn.Module', "
        "adaptor_T: 'Adaptor | Sequence[Adaptor | None] | None', adaptor_S: 'Adaptor | None', "
        "teacher_weights: 'Sequence[float] | None' = None, custom_matches: 'Sequence[dict[str, "
        "Any] | CustomMatch] | None' = None, *, tokenizer_T: 'Any' = None, tokenizer_S: 'Any' = None) -> 'None'"
    ),
    ('MultiTeacherDistiller', 'train'): (
        "(self, optimizer: 'torch.optim.Optimizer', scheduler: 'Any' = None, dataloader: 'Any' = None, "
        "num_epochs: 'int | None' = None, callback: 'Callable[..., Any] | None' = None, *, "
        "num_steps: 'int | None' = None, max_grad_norm: 'float | None' = None, "
        "batch_postprocessor: 'Callable[[Any], Any] | None' = None, scheduler_class: 'Any' = None, "
        "scheduler_args: 'dict[str, Any] | None' = None, resume_from: 'str | os.PathLike[str] | None' = None, "
        "num_train_epochs: 'int | None' = None, **args: 'Any') -> 'RunState'"
    ),
    ('MultiTeacherDistiller', 'build_teacher_cache'): (
        "(self, dataloader: 'Any' = None, *, dataloaders: 'Mapping[str, Any] | None' = None, "
        "batch_postprocessor: 'Callable[[Any], Any] | None' = None, **model_args: 'Any') -> 'dict[str, Any]'"
    ),
    ('MultiTaskDistiller', '__init__'): (
        "(self, train_config: 'TrainingConfig', distill_config: 'DistillationConfig', model_T: 'Mapping[str, "
        "nn.Module]', model_S: 'nn.Module', adaptor_T: 'Mapping[str, Adaptor | None]', "
        "adaptor_S: 'Mapping[str, Adaptor | None]', task_weights: 'Mapping[str, "
        "float] | None' = None) -> 'None'"
    ),
    ('MultiTaskDistiller', 'train'): (
        "(self, optimizer: 'torch.optim.Optimizer', scheduler: 'Any' = None, dataloader: 'Any' = None, "
        "num_epochs: 'int | None' = None, callback: 'Any' = None, *, dataloaders: 'Mapping[str, "
        "Any] | None' = None, tau: 'float' = 1.0, num_steps: 'int | None' = None, "
        "**kwargs: 'Any') -> 'RunState'"
    ),
    ('MultiTaskDistiller', 'build_teacher_cache'): (
        "(self, dataloader: 'Any' = None, *, dataloaders: 'Mapping[str, Any] | None' = None, "
        "batch_postprocessor: 'Callable[[Any], Any] | None' = None, **model_args: 'Any') -> 'dict[str, Any]'"
    ),
    ('BasicMultiTeacherDistillation', '__init__'): (
        "(self, train_config: 'TrainingConfig', distill_config: 'DistillationConfig', "
        "model_T: 'Sequence[nn.Module]', model_S: 'nn.Module', "
        "adaptor_T: 'Adaptor | Sequence[Adaptor | None] | None', adaptor_S: 'Adaptor | None', "
        "teacher_weights: 'Sequence[float] | None' = None, custom_matches: 'Sequence[dict[str, "
        "Any] | CustomMatch] | None' = None, *, tokenizer_T: 'Any' = None, tokenizer_S: 'Any' = None) -> 'None'"
    ),
    ('BasicMultiTeacherDistillation', 'train'): (
        "(self, optimizer: 'torch.optim.Optimizer', scheduler: 'Any' = None, dataloader: 'Any' = None, "
        "num_epochs: 'int | None' = None, callback: 'Callable[..., Any] | None' = None, *, "
        "num_steps: 'int | None' = None, max_grad_norm: 'float | None' = None, "
        "batch_postprocessor: 'Callable[[Any], Any] | None' = None, scheduler_class: 'Any' = None, "
        "scheduler_args: 'dict[str, Any] | None' = None, resume_from: 'str | os.PathLike[str] | None' = None, "
        "num_train_epochs: 'int | None' = None, **args: 'Any') -> 'RunState'"
    ),
    ('BasicMultiTeacherDistillation', 'build_teacher_cache'): (
        "(self, dataloader: 'Any' = None, *, dataloaders: 'Mapping[str, Any] | None' = None, "
        "batch_postprocessor: 'Callable[[Any], Any] | None' = None, **model_args: 'Any') -> 'dict[str, Any]'"
    ),
}


def test_distill_core_exports_the_same_names() -> None:
    assert sorted(distill_core.__all__) == EXPORTED


@pytest.mark.parametrize(("name", "method"), sorted(SIGNATURES))
def test_signature_is_unchanged(name: str, method: str) -> None:
    cls = getattr(distill_core, name, None) or getattr(distillers, name)
    function = getattr(cls, method, None)
    got = None if function is None else str(inspect.signature(function))
    assert got == SIGNATURES[(name, method)]


def test_textbrewer_names_are_the_distillers() -> None:
    assert distill_core.BasicTrainer is distill_core.BasicTraining
    assert distill_core.BasicDistiller is distill_core.BasicDistillation
    assert distill_core.GeneralDistiller is distill_core.Distillation
    assert distill_core.MultiTeacherDistiller is distill_core.MultiTeacherDistillation
    assert distill_core.MultiTaskDistiller is distill_core.MultiTaskDistillation
    assert distillers.BasicMultiTeacherDistillation is distill_core.MultiTeacherDistillation
