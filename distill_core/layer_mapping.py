"""Which teacher layers a student should match (and start from), for any pair of depths.

Indexing follows Hugging Face: ``hidden_states`` has ``num_layers + 1`` entries, index 0 being the
embedding output and index ``i`` the output of transformer layer ``i`` (1-based); ``attentions``
has ``num_layers`` entries, index ``i`` belonging to layer ``i + 1``.

The uniform mapping splits the teacher's layers into ``num_student_layers`` equal blocks and pairs
student layer ``j`` with the last teacher layer of block ``j``: student hidden state ``j`` matches
teacher hidden state ``round(j * num_teacher_layers / num_student_layers)``. For a 12-layer teacher
and a 4-layer student that is teacher layers 3, 6, 9, 12 (the mapping of TinyBERT and TextBrewer's
``T12-S4`` presets); the embeddings (0 -> 0) are matched too unless ``include_embeddings=False``.
The student is best initialised from the same teacher layers: :func:`student_init_layers`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["student_init_layers", "uniform_layer_mapping"]


def _check_depths(num_teacher_layers: int, num_student_layers: int) -> None:
    for name, value in (("num_teacher_layers", num_teacher_layers), ("num_student_layers", num_student_layers)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"Expected argument `{name}` to be a positive integer but got {value!r}")
    if num_student_layers > num_teacher_layers:
        raise ValueError(
            f"Expected argument `num_student_layers` ({num_student_layers}) to be at most "
            f"`num_teacher_layers` ({num_teacher_layers}): a student deeper than its teacher has no uniform mapping"
        )


def _teacher_layer(student_layer: int, num_teacher_layers: int, num_student_layers: int) -> int:
    """1-based teacher layer at the end of block ``student_layer`` (1-based); exact integer rounding."""
    return (2 * student_layer * num_teacher_layers + num_student_layers) // (2 * num_student_layers)


def student_init_layers(num_teacher_layers: int, num_student_layers: int) -> list[int]:
    """Return the 0-based teacher layers to copy into a student, one per student layer.

    They are the layers :func:`uniform_layer_mapping` matches, so each student layer starts as the
    teacher layer it is trained to imitate: 6 -> 2 gives ``[2, 5]``, 12 -> 4 gives ``[2, 5, 8, 11]``.
    """
    _check_depths(num_teacher_layers, num_student_layers)
    return [_teacher_layer(j, num_teacher_layers, num_student_layers) - 1 for j in range(1, num_student_layers + 1)]


def uniform_layer_mapping(
    num_teacher_layers: int,
    num_student_layers: int,
    feature: str = "hidden",
    loss: str = "hidden_mse",
    *,
    weight: float = 1.0,
    proj: list[Any] | dict[str, Any] | None = None,
    include_embeddings: bool = True,
    params: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Return ``intermediate_matches`` dicts pairing each student layer with a uniformly spaced teacher layer.

    :param num_teacher_layers: transformer layers of the teacher (6 for MiniLM-L6, 12 for BERT-base).
    :param num_student_layers: transformer layers of the student.
    :param feature: ``"hidden"`` (hidden states, embeddings included) or ``"attention"``.
    :param loss: a registered match loss for that feature (``hidden_mse``, ``cos``, ``attention_mse``...).
    :param weight: the weight of every match.
    :param proj: a projection spec (e.g. ``["linear", 312, 768]``) when student and teacher widths
        differ; hidden features only.
    :param include_embeddings: also match the embedding outputs (hidden index 0); hidden only.
    :param params: the loss's own options, copied into every match.

    >>> [(m["layer_S"], m["layer_T"]) for m in uniform_layer_mapping(6, 2)]
    [(0, 0), (1, 3), (2, 6)]
    >>> [(m["layer_S"], m["layer_T"]) for m in uniform_layer_mapping(12, 4, "attention", "attention_mse")]
    [(0, 2), (1, 5), (2, 8), (3, 11)]
    """
    _check_depths(num_teacher_layers, num_student_layers)
    if feature not in ("hidden", "attention"):
        raise ValueError(f"Expected argument `feature` to be 'hidden' or 'attention' but got {feature!r}")
    if feature == "attention" and proj is not None:
        raise ValueError("attention maps have no width to project; pass proj=None for feature='attention'")
    pairs = [(j, _teacher_layer(j, num_teacher_layers, num_student_layers)) for j in range(1, num_student_layers + 1)]
    if feature == "attention":  # attentions are indexed from 0 = the first layer
        pairs = [(student - 1, teacher - 1) for student, teacher in pairs]
    elif include_embeddings:
        pairs.insert(0, (0, 0))
    matches = []
    for layer_S, layer_T in pairs:
        match: dict[str, Any] = {
            "layer_T": layer_T,
            "layer_S": layer_S,
            "feature": feature,
            "loss": loss,
            "weight": weight,
        }
        if proj is not None:
            match["proj"] = list(proj) if isinstance(proj, (list, tuple)) else dict(proj)
        if params:
            match["params"] = dict(params)
        matches.append(match)
    return matches
