"""``RunConfig``: the run file's sections (DESIGN §11), each a strict pydantic model.

``training`` and ``distillation`` are the core's own :class:`~distill_core.config.TrainingConfig`
and :class:`~distill_core.config.DistillationConfig`; the other sections say what the core API
takes as arguments (models, data, optimiser settings) or what happens around it (evaluation,
export). Paths are read relative to the current working folder, as a command line reads them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from distill_core.config import DistillationConfig, TrainingConfig
from distill_core.config.common import ConfigModel, SerializableConfig

#: the dtypes a teacher may be loaded in (``torch.<name>``)
DTYPES = ("float32", "bfloat16", "float16")


class TeacherSection(ConfigModel):
    """The teacher: a local Hugging Face model folder (or a GGUF file in it)."""

    path: str = Field(
        min_length=1,
        description="folder of a causal LM or sequence classifier saved with save_pretrained (config.json, "
        "weights); `package:MODULE/PATH` names a folder inside an installed package; `org/name` a Hub model "
        "already in the local Hugging Face cache",
    )
    gguf_file: str | None = Field(
        None, description="a GGUF file in `path` to read (dequantised by transformers) instead of config.json + weights"
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="dtype the teacher is loaded in; it only runs forward passes"
    )


#: the projections a LoRA adapter wraps by default: the attention of Llama-style models
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


class LoraSection(ConfigModel):
    """A LoRA adapter on the student (peft): only the adapter's weights train."""

    r: int = Field(8, ge=1, description="rank of the adapter's low-rank update")
    alpha: float = Field(16.0, gt=0, description="scaling numerator: the update is scaled by alpha / r")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter's input")
    target_modules: list[str] = Field(
        default_factory=lambda: list(LORA_TARGETS),
        min_length=1,
        description="names of the modules (Linear layers) to adapt; the default suits Llama-style attention",
    )


#: the layer rules of ``student.from_teacher`` (distill_core.students.selection.LAYER_METHODS)
LAYER_METHODS = ("block_influence", "first_last", "uniform", "explicit")


class FromTeacherSection(ConfigModel):
    """A student cut from the teacher's weights (docs/students.md): fewer layers and/or narrower ones."""

    layers: int | list[int] | None = Field(
        None,
        description="how many of the teacher's layers to keep, or the list of their indices (0-based; the "
        "`explicit` method); None: every layer",
    )
    layer_method: Literal["block_influence", "first_last", "uniform", "explicit"] | None = Field(
        None,
        description="which layers: block_influence (calibrated), first_last, uniform, or explicit (a list in "
        "`layers`); None: explicit for a list, else block_influence",
    )
    heads: int | None = Field(None, ge=1, description="attention (query) heads per layer; None: the teacher's")
    kv_heads: int | None = Field(
        None, ge=1, description="key/value heads per layer; None: the teacher's ratio of heads to key/value heads"
    )
    intermediate: int | None = Field(None, ge=1, description="MLP channels per layer; None: the teacher's")
    hidden: int | None = Field(None, ge=1, description="hidden size; None: the teacher's")
    calibration_examples: int = Field(
        16,
        ge=1,
        description="the first N training examples (in file order) calibrate the teacher when the rule needs "
        "scores (block_influence, any width)",
    )

    @model_validator(mode="after")
    def _method_fits_layers(self) -> FromTeacherSection:
        if isinstance(self.layers, list):
            if self.layer_method not in (None, "explicit"):
                raise ValueError(
                    f"layers lists the layers to keep, so layer_method is 'explicit' (or left out), not "
                    f"{self.layer_method!r}; give a number of layers for {self.layer_method!r}"
                )
            if not self.layers:
                raise ValueError("layers lists no layer; a student keeps at least one")
        elif self.layer_method == "explicit":
            raise ValueError("layer_method 'explicit' takes the list of layers to keep in `layers`, e.g. [0, 1, 5]")
        elif isinstance(self.layers, int) and self.layers < 1:
            raise ValueError(f"layers must be at least 1, got {self.layers}")
        return self

    @property
    def method(self) -> str:
        """The layer rule in effect: ``explicit`` for a list, else ``layer_method`` or ``block_influence``."""
        if isinstance(self.layers, list):
            return "explicit"
        return self.layer_method or "block_influence"

    @property
    def width_pruned(self) -> bool:
        """Whether any width (heads, key/value groups, MLP channels, hidden size) is set."""
        return any(value is not None for value in (self.heads, self.kv_heads, self.intermediate, self.hidden))

    @property
    def needs_calibration(self) -> bool:
        """Whether the rule ranks by calibrated scores (block influence of a number of layers, or any width)."""
        return self.width_pruned or (self.method == "block_influence" and isinstance(self.layers, int))


class StudentSection(ConfigModel):
    """The student: its own model folder, or one cut from the teacher; trained in float32 (whole, or LoRA)."""

    path: str | None = Field(
        None,
        min_length=1,
        description="folder of the student model (config.json, weights); `package:MODULE/PATH` names a folder "
        "inside an installed package; `org/name` a Hub model in the local Hugging Face cache; set this or "
        "from_teacher",
    )
    from_teacher: FromTeacherSection | None = Field(
        None,
        description="build the student from the teacher's weights (layers and widths kept by importance) "
        "instead of reading a folder; set this or path",
    )
    lora: LoraSection | None = Field(
        None, description="train a LoRA adapter (peft) instead of every weight; None: train the whole student"
    )

    @model_validator(mode="after")
    def _one_source(self) -> StudentSection:
        if (self.path is None) == (self.from_teacher is None):
            raise ValueError(
                "set exactly one of path (a model folder) and from_teacher (a student cut from the teacher)"
                + ("; both are set" if self.path is not None else "")
            )
        return self


class DataSection(ConfigModel):
    """The training (and held-out) examples and how they become token ids and labels."""

    train_file: str = Field(
        min_length=1,
        description="a .jsonl, .json (a list of objects), .csv, .txt or .parquet file, or a folder written by "
        "datasets' save_to_disk (one split)",
    )
    eval_file: str | None = Field(None, description="held-out examples in the same format; None: see eval_fraction")
    eval_fraction: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="with no eval_file, hold out this fraction of train_file (a fixed shuffle by training.seed); "
        "0 and no eval_file: no evaluation",
    )
    format: Literal["text", "messages", "prompt_completion", "text_label"] = Field(
        "text",
        description="text: language modelling on every token; messages: a chat through the tokenizer's chat "
        "template, loss on assistant tokens only; prompt_completion: loss on the completion only; "
        "text_label: a text and its class (sequence classification)",
    )
    text_column: str = Field(
        "text", min_length=1, description="the column of a `text` example (a .txt file: each line)"
    )
    messages_column: str = Field("messages", min_length=1, description="the column holding [{role, content}, ...]")
    label_column: str = Field("label", min_length=1, description="the class of a `text_label` example")
    prompt_column: str = Field("prompt", min_length=1)
    completion_column: str = Field("completion", min_length=1)
    tokenizer: str | None = Field(
        None, description="folder of the tokenizer; None: the student's folder if it holds one, else the teacher's"
    )
    max_length: int = Field(512, ge=2, description="tokens per example (longer ones are cut); block size when packing")
    packing: bool = Field(
        False, description="text only: join all examples (separated by EOS) and cut them into blocks of max_length"
    )

    @model_validator(mode="after")
    def _packing_is_for_text(self) -> DataSection:
        if self.packing and self.format != "text":
            raise ValueError(
                f"packing joins `text` examples into blocks; format {self.format!r} keeps each example whole"
            )
        return self


class OptimizationSection(ConfigModel):
    """What the core API takes as ``train()`` arguments: batch size, length, optimiser and schedule."""

    batch_size: int = Field(
        8, ge=1, description="examples per micro-batch (effective batch: x gradient_accumulation_steps)"
    )
    num_epochs: int | None = Field(
        None, ge=1, description="passes over the training data; None: 1 unless num_steps is set"
    )
    num_steps: int | None = Field(None, ge=1, description="optimisation steps instead of epochs")
    learning_rate: float = Field(5e-5, gt=0, description="AdamW learning rate (peak, after warm-up)")
    weight_decay: float = Field(0.0, ge=0)
    warmup_fraction: float = Field(
        0.0, ge=0, lt=1, description="linear warm-up over this fraction of the steps, then linear decay to 0"
    )
    max_grad_norm: float | None = Field(1.0, gt=0, description="clip the gradient norm; None: no clipping")
    seed: int = Field(0, description="seeds the shuffle of examples, the held-out split and torch")

    @model_validator(mode="after")
    def _epochs_or_steps(self) -> OptimizationSection:
        if self.num_epochs is not None and self.num_steps is not None:
            raise ValueError("set num_epochs or num_steps, not both")
        return self


#: the metrics ``eval.metric`` may name, each with whether a larger ("max") or smaller ("min") value is better
EVAL_METRICS = {"loss": "min", "perplexity": "min", "agreement": "max", "accuracy": "max", "macro_f1": "max"}


class EvalSection(ConfigModel):
    """The evaluation on the held-out examples: during training (with ``metric``) and after it."""

    batch_size: int = Field(8, ge=1)
    max_examples: int | None = Field(None, ge=1, description="evaluate on at most this many held-out examples")
    metric: Literal["loss", "perplexity", "agreement", "accuracy", "macro_f1"] | None = Field(
        None,
        description="evaluate the student on the held-out examples at each checkpoint (or every "
        "training.eval_steps) and keep the best by this metric (loss, perplexity: lower is better; agreement, "
        "accuracy, macro_f1: higher); None: evaluate once, after training",
    )


class ExportSection(ConfigModel):
    """Where the trained student is written, in the save_pretrained layout."""

    folder: str = Field("final", min_length=1, description="folder under training.output_dir")
    which: Literal["best", "last"] | None = Field(
        None,
        description="export the student of the best evaluation (by eval.metric) or of the last step; None: best "
        "when eval.metric is set, else last",
    )
    merge_lora: bool = Field(
        True,
        description="with student.lora: merge the adapter into the weights (a plain model); false: save the "
        "adapter alone (peft's save_pretrained layout, loaded over the student's base)",
    )


#: what the models do: next-token prediction, or one class per text
TASKS = ("causal_lm", "sequence_classification")


class RunConfig(SerializableConfig):
    """A whole distillation: models, data, training, distillation, evaluation and export."""

    task: Literal["causal_lm", "sequence_classification"] | None = Field(
        None,
        description="what the models do; None: from the teacher's config.json `architectures` "
        "(*ForSequenceClassification: sequence_classification, else causal_lm)",
    )
    teacher: TeacherSection
    student: StudentSection
    data: DataSection
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    distillation: DistillationConfig = Field(default_factory=DistillationConfig)
    optimization: OptimizationSection = Field(default_factory=OptimizationSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    export: ExportSection = Field(default_factory=ExportSection)


#: each section's name and model, in the order a run file lists them
SECTION_MODELS: dict[str, type[ConfigModel]] = {
    "teacher": TeacherSection,
    "student": StudentSection,
    "data": DataSection,
    "training": TrainingConfig,
    "distillation": DistillationConfig,
    "optimization": OptimizationSection,
    "eval": EvalSection,
    "export": ExportSection,
}
REQUIRED_SECTIONS = ("teacher", "student", "data")
