"""Hook specifications of distill, and the markers plugins use.

A plugin is any module (or object) with functions marked ``@hookimpl``. distill finds installed
plugins through the ``distill`` entry-point group; a plugin package registers itself with::

    [project.entry-points.distill]
    hidden_huber = "my_package.huber"

Every hook that computes something receives the component ``name`` first and must return ``None``
for a name it does not provide (pytest's contract), so a plain ``pm.hook.<hook>(...)`` call works.
distill itself never calls those hooks by scanning: the registry binds each name to its provider's
implementation once, at setup.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

#: The pluggy project name; also the entry-point group name.
PROJECT_NAME = "distill"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

if TYPE_CHECKING:  # imported for annotations only; keeps this module light
    import torch
    from pydantic import BaseModel

    from distill_core.components import ComponentInfo
    from distill_core.cross_tokenizer import TokenAlignment


@hookspec
def declare_components() -> list[ComponentInfo]:
    """Return the components this plugin provides.

    Each :class:`~distill_core.ComponentInfo` names a component of kind ``"kd_loss"``,
    ``"aligned_kd_loss"``, ``"match_loss"`` or ``"projection"``, its pydantic params model (or ``None``), a one-line
    summary and optionally ``aliases`` (other names configs may use; the compute hooks are then
    called with the canonical name). All plugins' results are collected; a name or alias declared
    twice is an error.
    """


@hookspec(firstresult=True)
def compute_kd_loss(
    name: str,
    logits_S: torch.Tensor,
    logits_T: torch.Tensor,
    temperature: float | torch.Tensor,
    mask: torch.Tensor | None,
    params: BaseModel | None,
) -> torch.Tensor | None:
    """Return the scalar knowledge-distillation loss ``name`` between student and teacher logits, or None.

    Stops at first non-None result. Reduce as a mean over rows (examples, or kept positions): the
    chunked token-level path (DESIGN §9) calls the same hook on 2-D (rows, V) chunks of a language
    model's positions and multiplies each result by its number of rows, so a plugin written for
    2-D logits gets bounded-memory token KD for free.

    :param name: the component name from the config (``kd_loss_type``).
    :param logits_S: student logits, (B, C) or (B, L, C); (rows, V) chunks on the chunked path.
    :param logits_T: teacher logits, same shape as ``logits_S``.
    :param temperature: a positive float, a per-example tensor (B,) or, for (B, L, C) logits, a
        per-position tensor (B, L); on the chunked path a per-row tensor (rows,) or a float.
    :param mask: for 3-D logits, the adaptor's ``logits_mask`` (B, L), 1 = keep; else None (a chunk
        holds kept rows only).
    :param params: the validated params model instance, or None if the component takes none.
    """


@hookspec(firstresult=True)
def compute_aligned_kd_loss(
    name: str,
    logits_S: torch.Tensor,
    logits_T: torch.Tensor,
    alignment: TokenAlignment,
    temperature: float | torch.Tensor,
    params: BaseModel | None,
) -> torch.Tensor | None:
    """Return the scalar KD loss ``name`` between a student and a teacher with different tokenizers, or None.

    Stops at first non-None result. The two sides' tokens are grouped where both end at the same
    byte (docs/cross-tokenizer.md); reduce as a mean over the kept groups
    (``alignment.group_mask``). With the same tokenizer on both sides every group is one token, and
    a loss should then equal its same-vocabulary counterpart.

    :param name: the component name from the config.
    :param logits_S: (B, L_S, V_S) student logits; row t is the distribution for token t of the
        student's sequence (a causal LM's logits shifted by one).
    :param logits_T: (B, L_T, V_T) teacher logits, row t for token t of the teacher's sequence.
    :param alignment: the :class:`~distill_core.cross_tokenizer.TokenAlignment` of the batch: group
        of each token on each side, the kept groups, the token ids, and the matched
        ``vocabularies`` (a :class:`~distill_core.cross_tokenizer.VocabularyPair`).
    :param temperature: a positive float or a 0-d tensor.
    :param params: the validated params model instance, or None.
    """


@hookspec(firstresult=True)
def compute_match_loss(
    name: str,
    feature_S: torch.Tensor | list[torch.Tensor],
    feature_T: torch.Tensor | list[torch.Tensor],
    mask: torch.Tensor | None,
    params: BaseModel | None,
) -> torch.Tensor | None:
    """Return the scalar intermediate-match loss ``name`` between student and teacher features, or None.

    Stops at first non-None result.

    :param name: the component name from the match's ``loss``.
    :param feature_S: the student feature (already projected), or a list of them when the match
        names several layers.
    :param feature_T: the teacher feature, or a list of them.
    :param mask: 1 = keep, or None. Usually the adaptor's ``inputs_mask`` (B, L); for attention
        maps it may also be a (B, Lq, Lk) pair mask (entry (i, j) kept where it is 1), which is how
        cross-attention maps (B, H, L_dec, L_enc) of encoder-decoders are masked. A loss that cannot
        use the mask it is given raises ``ShapeMismatchError`` naming both shapes.
    :param params: the validated params model instance, or None.
    """


@hookspec(firstresult=True)
def build_projection(name: str, dim_in: int, dim_out: int, params: BaseModel | None) -> torch.nn.Module | None:
    """Return a new ``nn.Module`` mapping the last dimension from ``dim_in`` to ``dim_out``, or None.

    Stops at first non-None result.

    :param name: the projection name (``proj[0]`` of a match).
    :param dim_in: the student feature width.
    :param dim_out: the teacher feature width.
    :param params: the validated params model instance, or None.
    """


@hookspec
def on_checkpoint(checkpoint: dict[str, Any], step: int, path: str) -> None:
    """Add this plugin's own state to ``checkpoint`` before it is written to ``path``.

    Called on every plugin at every checkpoint (no first result). Store under a key of your own,
    e.g. ``checkpoint["plugins"]["my_plugin"] = {...}``; values must be tensors or plain Python data
    so the file loads with ``torch.load(weights_only=True)``.

    :param checkpoint: the dict that is about to be saved; mutate it in place.
    :param step: the global optimisation step.
    :param path: where the checkpoint will be written.
    """
