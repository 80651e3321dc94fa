"""``distill shrink TEACHER_DIR --out DIR ...``: build a student from a local Hugging Face folder.

Reads the teacher (no downloads), calibrates on a text file when a rule needs scores, builds the
student, and writes to ``--out`` the student in the ``save_pretrained`` layout (with the teacher's
tokenizer), ``importance.json`` (every score and the plan) and ``layers.png``; the layer table goes
to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_shrink_parser", "run_shrink"]

#: selection.LAYER_METHODS, spelt here so that building the parser imports no torch (a test pins them equal)
LAYER_METHODS = ("block_influence", "first_last", "uniform", "explicit")


def _indices(text: str) -> list[int]:
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layers such as 0,1,5, got {text!r}") from None


def add_shrink_parser(sub: Any) -> None:
    """Add the ``shrink`` subcommand to the ``distill`` parser's subparsers."""
    shrink = sub.add_parser("shrink", help="build a smaller model of a teacher's family from its weights "
                            "(layers by block influence, width by activation importance)")
    shrink.add_argument("teacher", metavar="TEACHER_DIR", help="a local Hugging Face model folder (no downloads)")
    shrink.add_argument("--out", required=True, help="the folder for the student, importance.json and layers.png")
    depth = shrink.add_argument_group("depth")
    depth.add_argument("--layers", type=int, help="how many layers to keep (default: all)")
    depth.add_argument("--method", choices=LAYER_METHODS, default="block_influence",
                       help="which layers: highest block influence (default), first and last, uniform, or --keep")
    depth.add_argument("--keep", type=_indices, help="the layers of --method explicit, e.g. 0,1,5")
    width = shrink.add_argument_group("width (ranked by activation importance)")
    width.add_argument("--heads", type=int, help="attention heads per layer")
    width.add_argument("--kv-heads", type=int, help="key/value heads per layer (default: the teacher's ratio)")
    width.add_argument("--intermediate", type=int, help="MLP channels per layer")
    width.add_argument("--hidden", type=int, help="hidden size")
    text = shrink.add_argument_group("calibration")
    text.add_argument("--calibration", help="a .txt (one document per line) or .jsonl (a \"text\" field) file")
    text.add_argument("--text-field", default="text", help="the .jsonl field holding the text (default: text)")
    text.add_argument("--block-size", type=int, default=128, help="tokens per calibration block (default: 128)")
    text.add_argument("--max-blocks", type=int, default=64, help="calibration blocks at most (default: 64)")
    text.add_argument("--batch-size", type=int, default=4, help="blocks per forward pass (default: 4)")
    shrink.add_argument("--no-progress", action="store_true", help="no progress bar")
    shrink.add_argument("--json", action="store_true", help="print the summary as JSON instead of the table")
    shrink.set_defaults(func=run_shrink)


def _load_teacher(folder: Path) -> tuple[Any, Any]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder only: never reach the network
    import transformers

    transformers.logging.set_verbosity_error()
    config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    architecture = (getattr(config, "architectures", None) or [None])[0]
    model_class = getattr(transformers, architecture, None) if architecture else None
    if model_class is None:
        model_class = transformers.AutoModelForCausalLM if config.model_type != "bert" else transformers.AutoModel
    model = model_class.from_pretrained(str(folder), local_files_only=True).eval()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError):
        tokenizer = None
    return model, tokenizer


def run_shrink(args: argparse.Namespace) -> int:
    """Run ``distill shrink``; return 0, 1 (the teacher or text cannot be used) or 2 (bad options)."""
    from distill_core.students import build_student, calibrate, layer_table, plan_student, plot_layer_scores
    from distill_core.students.text import block_batches, read_documents, token_blocks

    folder, out = Path(args.teacher), Path(args.out)
    if not (folder / "config.json").is_file():
        print(f"error: {folder}: not a Hugging Face model folder (no config.json)", file=sys.stderr)
        return 2
    width = any(value is not None for value in (args.heads, args.kv_heads, args.intermediate, args.hidden))
    needs_scores = width or (args.method == "block_influence" and args.layers is not None)
    if needs_scores and not args.calibration:
        print("error: block influence and width pruning rank by calibration: pass --calibration FILE",
              file=sys.stderr)
        return 2
    try:
        teacher, tokenizer = _load_teacher(folder)
        scores = None
        if args.calibration:
            if tokenizer is None:
                raise ValueError(f"{folder}: has no tokenizer to read the calibration text with")
            blocks = token_blocks(tokenizer, read_documents(args.calibration, field=args.text_field),
                                  block_size=args.block_size, max_blocks=args.max_blocks)
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
            scores = calibrate(teacher, block_batches(blocks, batch_size=args.batch_size, pad_token_id=pad),
                               total=-(-len(blocks) // args.batch_size), progress=not args.no_progress)
        plan = plan_student(teacher, layers=args.layers, method=args.method, keep=args.keep, heads=args.heads,
                            kv_heads=args.kv_heads, intermediate=args.intermediate, hidden=args.hidden,
                            scores=scores)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    student = build_student(teacher, plan, teacher_name=str(folder))
    out.mkdir(parents=True, exist_ok=True)
    student.save_pretrained(str(out))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    teacher_parameters = sum(parameter.numel() for parameter in teacher.parameters())
    student_parameters = sum(parameter.numel() for parameter in student.parameters())
    summary = {"teacher": str(folder), "student": str(out), "parameters": student_parameters,
               "teacher_parameters": teacher_parameters, "plan": plan.summary()}
    if scores is not None:
        summary["calibration"] = {"file": args.calibration, "samples": scores.samples, "tokens": scores.tokens}
        summary["block_influence"] = [round(value, 6) for value in scores.block_influence]
        plot_layer_scores(scores.block_influence, plan.layers, out / "layers.png")
    (out / "importance.json").write_text(json.dumps(
        {**summary, "scores": None if scores is None else scores.to_dict()}, indent=1) + "\n")
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        if scores is not None:
            print(layer_table(scores.block_influence, plan.layers))
        print(f"kept layers {plan.layers}; {student_parameters:,} parameters of the teacher's "
              f"{teacher_parameters:,}; written to {out}")
    return 0
