"""Generate docs/config.md from the pydantic models (the single source of truth).

python docs/gen_config_reference.py          # rewrite docs/config.md
python docs/gen_config_reference.py --check  # exit 1 if docs/config.md is out of date
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill_core.config import (  # noqa: E402
    TEXTBREWER_REPLACED,
    CustomMatch,
    DistillationConfig,
    IntermediateMatch,
    ProjectionSpec,
    TrainingConfig,
)
from distill_core.schedules import TEMPERATURE_SCHEDULERS, WEIGHT_SCHEDULERS  # noqa: E402
from distill_core.teacher_cache import TeacherCacheConfig  # noqa: E402

TARGET = Path(__file__).with_name("config.md")


def _type(prop: dict[str, Any]) -> str:
    if "anyOf" in prop:
        return " or ".join(_type(p) for p in prop["anyOf"])
    if "$ref" in prop:
        return prop["$ref"].rsplit("/", 1)[-1]
    if "enum" in prop:
        return " / ".join(json.dumps(v) for v in prop["enum"])
    if "const" in prop:
        return json.dumps(prop["const"])
    kind = prop.get("type", "any")
    if kind == "array":
        return f"list of {_type(prop.get('items', {}))}"
    return kind


def _limits(prop: dict[str, Any]) -> str:
    parts = []
    for key, symbol in (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("minLength", "length ≥")):
        if key in prop:
            parts.append(f"{symbol} {prop[key]}")
    for option in prop.get("anyOf", []):
        parts.extend(_limits(option).split(", ") if _limits(option) else [])
    return ", ".join(parts)


def table(model: Any) -> str:
    schema = model.model_json_schema()
    lines = ["| field | type | default | limits | notes |", "|---|---|---|---|---|"]
    required = set(schema.get("required", []))
    for name, prop in schema["properties"].items():
        default = "(required)" if name in required else f"`{json.dumps(prop.get('default'))}`"
        notes = (prop.get("description") or "").replace("|", "\\|")
        lines.append(f"| `{name}` | {_type(prop)} | {default} | {_limits(prop)} | {notes} |")
    return "\n".join(lines)


def render() -> str:
    sections = [
        "# Configuration reference",
        "",
        "Generated from the pydantic models by `python docs/gen_config_reference.py`; do not edit by hand.",
        "Every model rejects unknown keys, and names (losses, projections, schedules) are checked against",
        "the live registry when a config is built (`distill plugins` lists them; `distill schema` prints",
        "the JSON schema with those names filled in). Every number must be finite: inf and NaN are refused",
        "with the field's name.",
        "",
        "## Config files",
        "",
        "`from_dict` / `from_json_file` read, and `to_dict` / `to_json_file` write, one config's fields. They",
        'also read the file `distill validate` reads, `{"training": {...}, "distillation": {...}}` (either',
        "section alone too): `TrainingConfig` reads its `training` section, `DistillationConfig` its",
        "`distillation` one, and an error names the section it is in (`distillation.temperature`).",
    ]
    for model, intro in (
        (TrainingConfig, TrainingConfig.__doc__),
        (DistillationConfig, DistillationConfig.__doc__),
        (IntermediateMatch, IntermediateMatch.__doc__),
        (CustomMatch, CustomMatch.__doc__),
        (ProjectionSpec, ProjectionSpec.__doc__),
        (TeacherCacheConfig, TeacherCacheConfig.__doc__),
    ):
        doc = " ".join(line.strip() for line in (intro or "").strip().splitlines())
        sections += ["", f"## {model.__name__}", "", doc, "", table(model)]
    sections += [
        "",
        "## Schedules",
        "",
        "`temperature_scheduler`: "
        + ", ".join(f"`{name}`" for name in TEMPERATURE_SCHEDULERS)
        + ' — as a name, `[name, *args]` (the seed\'s list form, e.g. `["flsw", 1, 1]`) or'
        ' `{"name": ..., **params}`. `flsw` takes `beta`, `gamma`; `cwsm` takes `beta`.',
        "",
        "`kd_loss_weight_scheduler`, `hard_label_weight_scheduler`: "
        + ", ".join(f"`{name}`" for name in WEIGHT_SCHEDULERS)
        + " — `linear_growth` gives `weight · p`, `linear_decay` gives `weight · (1 − p)` at training"
        " progress `p = step / total_steps`; `none` and `constant` keep the weight.",
        "",
        "## Coming from TextBrewer",
        "",
        "The field names are TextBrewer's, and so are the loss, projection (`relu`, `tanh` are aliases of",
        "`linear_relu`, `linear_tanh`) and schedule names; TextBrewer's class names `BasicTrainer`,",
        "`BasicDistiller`, `GeneralDistiller`, `MultiTeacherDistiller` and `MultiTaskDistiller` are",
        "importable from `distill_core` as aliases of `BasicTraining`, `BasicDistillation`, `Distillation`,",
        "`MultiTeacherDistillation` and `MultiTaskDistillation`. TextBrewer options distill does not take",
        "are refused with a pointer to what replaces them:",
        "",
        *[f"- `{key}`: {hint}." for key, hint in TEXTBREWER_REPLACED.items()],
        "",
    ]
    return "\n".join(sections)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not TARGET.exists() or TARGET.read_text() != text:
            print(f"{TARGET} is out of date: run python docs/gen_config_reference.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
