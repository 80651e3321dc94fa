"""The trained student in the ``save_pretrained`` layout, with a model card and the run config.

``export_student`` writes ``config.json``, ``model.safetensors``, ``generation_config.json`` and
the tokenizer's files (what ``AutoModelForCausalLM.from_pretrained`` and
``AutoTokenizer.from_pretrained`` read), then ``README.md`` (the model card) and ``run.yaml``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from torch import nn

from distill_core.atomic import write_text_atomic


def sha256_of(paths: Iterable[str]) -> str:
    """The sha256 of the data files' bytes, in order: the data fingerprint of the model card.

    A folder (a dataset saved with ``save_to_disk``) counts as its files' relative names and bytes, sorted.
    """
    digest = hashlib.sha256()
    for path in paths:
        folder = Path(path)
        if not folder.is_dir():
            _digest_file(digest, folder)
            continue
        for file in sorted(item for item in folder.rglob("*") if item.is_file()):
            digest.update(file.relative_to(folder).as_posix().encode() + b"\0")
            _digest_file(digest, file)
    return digest.hexdigest()


def _digest_file(digest: Any, path: Path) -> None:
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)


def _lora_lines(run: dict[str, Any]) -> list[str]:
    lora = run["student"].get("lora")
    if not lora:
        return []
    merged = run.get("export", {}).get("merge_lora", True)
    return [
        f"- LoRA adapter (r {lora['r']}, alpha {lora['alpha']:g}, on {', '.join(lora['target_modules'])}); "
        + ("merged into these weights" if merged else "this folder holds the adapter alone")
    ]


def _built_lines(built: dict[str, Any] | None) -> list[str]:
    if not built:
        return []
    plan = built["plan"]
    line = (
        f"- the student was cut from the teacher by `distill_core.students`: teacher layers {plan['layers']} "
        f"({plan['layer_method']}), width {plan['width']}; {built['parameters']:,} parameters of the teacher's "
        f"{built['teacher_parameters']:,}"
    )
    if built.get("calibration"):
        line += f"; calibrated on {built['calibration']['examples']} training examples"
    return [line + " (as built: `student_init/` beside `final/`, with `importance.json`)"]


def _checkpoint_line(best: dict[str, Any] | None) -> list[str]:
    if not best:
        return ["- these are the weights of the last training step"]
    return [
        f"- these are the weights of the best held-out evaluation by `{best['name']}`: step {best['step']} "
        f"({best['name']} {best['metric']:.4f}; {'lower' if best['mode'] == 'min' else 'higher'} is better)"
    ]


def model_card(
    run: dict[str, Any],
    results: dict[str, Any],
    fingerprint: str,
    version: str,
    *,
    built: dict[str, Any] | None = None,
    best: dict[str, Any] | None = None,
) -> str:
    """The README.md of the exported student: where it came from, how it was trained, how it scored."""
    teacher, data, distillation = run["teacher"], run["data"], run["distillation"]
    optimization, training = run["optimization"], run["training"]
    source = teacher["path"] + (f" ({teacher['gguf_file']})" if teacher.get("gguf_file") else "")
    files = [data["train_file"]] + ([data["eval_file"]] if data.get("eval_file") else [])
    lines = [
        "---",
        "library_name: transformers",
        "tags: [distill, knowledge-distillation]",
        "---",
        "",
        "# Distilled student",
        "",
        f"Distilled with distill {version} from the teacher `{source}` into "
        + (f"the student `{run['student']['path']}`." if run["student"].get("path") else "a student cut from it."),
        "",
        "## Recipe",
        "",
        f"- KD loss `{distillation['kd_loss_type']}` (weight {distillation['kd_loss_weight']:g}) at temperature "
        f"{distillation['temperature']:g}; hard-label weight {distillation['hard_label_weight']:g}",
        f"- intermediate matches: {len(distillation.get('intermediate_matches') or [])}",
        *_built_lines(built),
        *_lora_lines(run),
        *_checkpoint_line(best),
        f"- data: {', '.join(f'`{name}`' for name in files)}, format `{data['format']}`, max_length "
        f"{data['max_length']}{', packed' if data.get('packing') else ''}",
        f"- data fingerprint (sha256 of the data files): `{fingerprint}`",
        f"- AdamW, learning rate {optimization['learning_rate']:g}, batch {optimization['batch_size']} x "
        f"{training['gradient_accumulation_steps']} accumulation, "
        + (
            f"{optimization['num_steps']} steps"
            if optimization.get("num_steps")
            else f"{optimization.get('num_epochs') or 1} epoch(s)"
        ),
        "",
        "The whole run configuration is in `run.yaml` beside this file.",
        "",
        "## Evaluation (held-out data)",
        "",
    ]
    if results.get("examples"):  # sequence classification
        lines += ["| model | accuracy | macro-F1 |", "|---|---|---|"]
        for role in ("student", "teacher"):
            if role in results:
                lines.append(f"| {role} | {results[role]['accuracy']:.4f} | {results[role]['macro_f1']:.4f} |")
        if "agreement" in results:
            lines += [
                "",
                f"Agreement with the teacher: {results['agreement']:.1%} over {results['examples']:,} examples.",
            ]
    elif results.get("tokens"):
        lines += ["| model | loss | perplexity |", "|---|---|---|"]
        for role in ("student", "teacher"):
            if role in results:
                lines.append(f"| {role} | {results[role]['loss']:.4f} | {results[role]['perplexity']:.2f} |")
        if "top1_agreement" in results:
            lines += [
                "",
                f"Top-1 agreement of the student with the teacher: {results['top1_agreement']:.1%} "
                f"over {results['tokens']:,} tokens.",
            ]
    else:
        lines.append("No held-out data was given (data.eval_file or data.eval_fraction).")
    return "\n".join(lines) + "\n"


def is_peft_model(model: nn.Module) -> bool:
    """Whether ``model`` is wrapped by peft (a LoRA student)."""
    return hasattr(model, "merge_and_unload") and hasattr(model, "peft_config")


def export_student(
    student: nn.Module,
    tokenizer: Any,
    folder: str | Path,
    *,
    run: dict[str, Any],
    results: dict[str, Any],
    fingerprint: str,
    version: str,
    merge_lora: bool = True,
    built: dict[str, Any] | None = None,
    best: dict[str, Any] | None = None,
) -> tuple[Path, nn.Module]:
    """Write the student to ``folder`` (save_pretrained layout, model card, run.yaml).

    A peft student is merged into its base weights first (``merge_and_unload``, in place) unless
    ``merge_lora`` is false; then only the adapter is written, as peft's ``save_pretrained`` does.
    ``built``: the report of a student cut from the teacher (``student.from_teacher``), for the card;
    ``best``: ``best.json`` (and the metric's ``name``) when the student is the best checkpoint's.
    Return the folder and the model written (the merged model after a merge).
    """
    import yaml

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if is_peft_model(student) and merge_lora:
        student = student.merge_and_unload()
    student.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    write_text_atomic(folder / "README.md", model_card(run, results, fingerprint, version, built=built, best=best))
    write_text_atomic(folder / "run.yaml", yaml.safe_dump(run, sort_keys=False))
    write_text_atomic(folder / "eval_results.json", json.dumps(results, indent=2) + "\n")
    return folder, student
