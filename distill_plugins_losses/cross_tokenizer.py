"""KD losses between a student and a teacher with different tokenizers: ``gold`` and ``xtoken``.

Both compare the two models over aligned token groups (:mod:`distill_core.cross_tokenizer`): each
group's chained vector ``q_g(v) = p(v | first row) · Π_{k≥2} p(x_k | row k)`` on each side
(:func:`~distill_core.cross_tokenizer.group_log_probs`), with the temperature applied to the logits
first. Values are per group, multiplied by T² and averaged over the kept groups
(``alignment.group_mask``); the gradient reaches the student only. The chained vectors need not sum
to 1, so the KL terms are the generalised KL (I-divergence) ``Σ a·log(a/b) − a + b``, which is never
negative and equals the KL when both sides sum to 1; with the same tokenizer on both sides every
group is one token and both losses are exactly the forward KL ``kl``.
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from distill_core.components import ComponentInfo
from distill_core.cross_tokenizer import TokenAlignment, VocabularyPair, group_log_probs
from distill_core.errors import ShapeMismatchError
from distill_core.hookspecs import hookimpl
from distill_plugins_losses._common import masked_mean, resolve_params, shape_str, student_teacher, xlogy_safe
from distill_plugins_losses.kd import Temperature, nonnegative, scale_rows_by_t2


class GoldParams(BaseModel):
    """Options of ``gold``."""

    model_config = ConfigDict(extra="forbid")
    unmatched_weight: float = Field(
        1.0, ge=0.0, description="weight of the sorted-probability L1 (ULD) over the unmatched tokens"
    )


class XTokenParams(BaseModel):
    """Options of ``xtoken``."""

    model_config = ConfigDict(extra="forbid")
    top_k: int | None = Field(
        100, ge=1, description="teacher tokens compared per group (the rest is one bin); None: all of them"
    )
    floor: float = Field(
        1e-12,
        gt=0.0,
        description="stands in for a projected probability of 0 (a teacher token no student token maps to)",
    )


def _temperature(temperature: Temperature, batch: int) -> float | Tensor:
    """Return the temperature as a float or a tensor broadcasting over (B, G, V)."""
    if isinstance(temperature, Tensor):
        if temperature.ndim == 0:
            return temperature.float()
        if tuple(temperature.shape) == (batch,):
            return temperature.float().reshape(batch, 1, 1)
        raise ShapeMismatchError(
            f"Expected a tensor `temperature` of shape () or (B,) = ({batch},) but got shape "
            f"{shape_str(temperature.shape)}"
        )
    value = float(temperature)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"Expected argument `temperature` to be a positive finite number but got {temperature}")
    return value


def _checked(logits_S: Tensor, logits_T: Tensor, alignment: TokenAlignment, loss: str) -> VocabularyPair:
    vocabularies = alignment.vocabularies
    if vocabularies is None:
        raise ValueError(
            f"Expected argument `alignment` of {loss!r} to carry the matched vocabularies but got none; "
            f"build them once with VocabularyPair.from_tokenizers(tokenizer_S, tokenizer_T) and pass "
            f"alignment.with_vocabularies(pair)"
        )
    if alignment.token_ids_S is None or alignment.token_ids_T is None:
        raise ValueError(f"Expected argument `alignment` of {loss!r} to carry token_ids_S and token_ids_T")
    for side, logits, group_ids, size in (
        ("student", logits_S, alignment.group_ids_S, vocabularies.size_S),
        ("teacher", logits_T, alignment.group_ids_T, vocabularies.size_T),
    ):
        if logits.ndim != 3 or tuple(logits.shape[:2]) != tuple(group_ids.shape) or logits.shape[-1] != size:
            raise ShapeMismatchError(
                f"Expected {side} logits of shape (B, L, V) = {shape_str((*group_ids.shape, size))} (the "
                f"alignment's tokens, the vocabulary's size) but got {shape_str(logits.shape)}"
            )
    return vocabularies


def _group_log_probs(logits: Tensor, token_ids: Tensor, group_ids: Tensor, tau: float | Tensor, groups: int) -> Tensor:
    grouped = (group_ids >= 0).unsqueeze(-1)
    # rows in no group (padding) may hold NaN or -inf: zeros keep every term and gradient finite
    logits = torch.where(grouped, logits, torch.zeros_like(logits))
    if not (isinstance(tau, float) and tau == 1.0):
        logits = logits / tau
    return group_log_probs(logits.log_softmax(-1), token_ids.to(logits.device), group_ids, groups)


def _chained(
    logits_S: Tensor, logits_T: Tensor, alignment: TokenAlignment, temperature: Temperature
) -> tuple[Tensor, Tensor, float | Tensor]:
    logits_S, logits_T = student_teacher(logits_S, logits_T)
    tau = _temperature(temperature, logits_S.shape[0])
    groups = alignment.max_groups
    log_q_S = _group_log_probs(logits_S, alignment.token_ids_S, alignment.group_ids_S, tau, groups)
    log_q_T = _group_log_probs(logits_T, alignment.token_ids_T, alignment.group_ids_T, tau, groups)
    return log_q_S, log_q_T, tau


def _class_log_sum(log_values: Tensor, classes: Tensor, num_classes: int) -> Tensor:
    """Return ``log Σ exp`` of the entries of each class (last axis), stably."""
    shape = (*log_values.shape[:-1], num_classes)
    index = classes.expand_as(log_values)
    peak = torch.full(shape, -torch.inf, dtype=log_values.dtype, device=log_values.device)
    peak = peak.scatter_reduce(-1, index, log_values.detach(), reduce="amax")
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    summed = torch.zeros(shape, dtype=log_values.dtype, device=log_values.device)
    summed = summed.scatter_add(-1, index, (log_values - peak.gather(-1, index)).exp())
    return summed.log() + peak


def generalised_kl(log_a: Tensor, log_b: Tensor) -> Tensor:
    """Return ``Σ a·(log a − log b) − a + b`` over the last axis (the KL when a and b sum to 1)."""
    a, b = log_a.exp(), log_b.exp()
    return nonnegative((xlogy_safe(a, log_a - log_b) - a + b).sum(-1))


def sorted_l1(probs_S: Tensor, probs_T: Tensor) -> Tensor:
    """Return ``Σ_i |sort↓(p_T)_i − sort↓(p_S)_i|`` over the last axis, the shorter side padded with zeros.

    The closed form of the Wasserstein-1 distance between the two sorted distributions used by ULD
    (Boizard et al., 2024, "Towards Cross-Tokenizer Distillation: the Universal Logit Distance Loss
    for LLMs"); it needs no correspondence between the two vocabularies.

    Only the ``n`` largest entries of the longer side meet a nonzero entry of the shorter side (``n``
    its width); the rest meet its zero padding and add their plain sum. So the longer side is never
    sorted whole: ``topk(n)`` of it and its remaining mass give the same value (a teacher with
    SmolLM2's vocabulary held about 41,800 unmatched ids against a BPE student's 900, and the full
    sort had been about 40% of a real training step; ``topk`` of 3,500 of 32,000 entries is about 4x
    faster than sorting them).
    """
    if probs_S.shape[-1] > probs_T.shape[-1]:
        probs_S, probs_T = probs_T, probs_S  # symmetric: make probs_T the longer side
    width = probs_S.shape[-1]
    if width == 0:
        return probs_T.sum(-1)
    sorted_S = probs_S.sort(-1, descending=True).values
    if width == probs_T.shape[-1]:
        return (probs_T.sort(-1, descending=True).values - sorted_S).abs().sum(-1)
    top_T = probs_T.topk(width, dim=-1, sorted=True).values
    # the entries of the longer side past its top n meet the shorter side's zero padding: |x - 0| = x
    rest_T = (probs_T.sum(-1) - top_T.sum(-1)).clamp_min(0)
    return (top_T - sorted_S).abs().sum(-1) + rest_T


def gold_loss(
    logits_S: Tensor,
    logits_T: Tensor,
    alignment: TokenAlignment,
    *,
    temperature: Temperature = 1.0,
    unmatched_weight: float = 1.0,
) -> Tensor:
    """Return ``T² · mean_groups [KL_M(q_T ‖ q_S) + w · ULD_U(q_T, q_S)]``, the hybrid of GOLD.

    With ``M`` the tokens whose keys occur in both vocabularies (leading-space markers unified;
    :class:`~distill_core.cross_tokenizer.VocabularyPair`) and ``U`` the others::

        KL_M = Σ_{c∈M} q_T(c) · log(q_T(c) / q_S(c)) − q_T(c) + q_S(c)   (generalised KL)
        ULD_U = Σ_i |sort↓(q_T|U)_i − sort↓(q_S|U)_i|                      (sorted-probability L1)

    ``q`` are the chained group vectors; a key held by several ids of one vocabulary sums their
    entries. The split is the hybrid of GOLD (the cross-tokenizer distillation trainer of Hugging
    Face TRL, 2025); the unmatched part is the ULD loss of Boizard et al., 2024.

    :param logits_S: (B, L_S, V_S) student logits, row t for the student's token t.
    :param logits_T: (B, L_T, V_T) teacher logits, row t for the teacher's token t.
    :param alignment: the batch's groups, token ids and matched vocabularies.
    :param temperature: a positive number, or a tensor () or (B,).
    :param unmatched_weight: w, the weight of the ULD part.
    """
    vocabularies = _checked(logits_S, logits_T, alignment, "gold")
    log_q_S, log_q_T, tau = _chained(logits_S, logits_T, alignment, temperature)
    split = vocabularies.matching(log_q_S.device)
    matched_S = log_q_S.index_select(-1, split["matched_S"])
    matched_T = log_q_T.index_select(-1, split["matched_T"])
    if not vocabularies.one_to_one:
        matched_S = _class_log_sum(matched_S, split["class_of_S"], vocabularies.num_classes)
        matched_T = _class_log_sum(matched_T, split["class_of_T"], vocabularies.num_classes)
    rows = generalised_kl(matched_T, matched_S)
    if unmatched_weight > 0 and (split["unmatched_S"].numel() or split["unmatched_T"].numel()):
        unmatched_S = log_q_S.index_select(-1, split["unmatched_S"]).exp()
        unmatched_T = log_q_T.index_select(-1, split["unmatched_T"]).exp()
        rows = rows + unmatched_weight * sorted_l1(unmatched_S, unmatched_T)
    return masked_mean(scale_rows_by_t2(rows, tau), alignment.group_mask.to(rows.device))


def log_project_to_teacher(log_probs_S: Tensor, vocabularies: VocabularyPair) -> Tensor:
    """Return ``log(Wᵀ p_S)``: the student's group vectors (…, V_S) in the teacher's vocabulary (…, V_T).

    Summed in log space (a log-sum-exp per teacher column), so a column fed by one student token is
    that token's log-probability exactly; a column no student token maps to is ``-inf``.
    """
    rows, cols, weights = vocabularies.projection(log_probs_S.device)
    contributions = log_probs_S.index_select(-1, rows) + weights.log()
    return _class_log_sum(contributions, cols, vocabularies.size_T)


def xtoken_loss(
    logits_S: Tensor,
    logits_T: Tensor,
    alignment: TokenAlignment,
    *,
    temperature: Temperature = 1.0,
    top_k: int | None = 100,
    floor: float = 1e-12,
) -> Tensor:
    """Return ``T² · mean_groups KL_K(q_T ‖ Wᵀ q_S)``, the student projected into the teacher's vocabulary.

    ``W`` (V_S × V_T, sparse, frozen) sends each student token to the teacher tokens with the same
    key, else to those with its longest key prefix (:meth:`VocabularyPair.projection`). ``K`` is the
    teacher's ``top_k`` tokens of the group plus one bin for the rest of each side's mass::

        KL_K = Σ_{t∈K} q_T(t)·log(q_T(t) / Wᵀq_S(t)) − q_T(t) + Wᵀq_S(t)  + (rest bin)

    Coarser bins never increase a KL, so the top-k value is at most the full one (``top_k=None``).
    In the spirit of X-Token (cross-tokenizer KD through a vocabulary projection); the matrix here is
    built from token strings alone, not learned.

    :param top_k: how many teacher tokens per group are compared one by one; None: all.
    :param floor: used instead of a projected probability of exactly 0 (a teacher token no student
        token maps to), so the value is large but finite.
    Other parameters as in :func:`gold_loss`.
    """
    vocabularies = _checked(logits_S, logits_T, alignment, "xtoken")
    log_q_S, log_q_T, tau = _chained(logits_S, logits_T, alignment, temperature)
    log_projected = log_project_to_teacher(log_q_S, vocabularies)
    if top_k is None or top_k >= vocabularies.size_T:
        log_a, log_b = log_q_T, log_projected
    else:
        top = log_q_T.topk(top_k, dim=-1).indices
        log_a, log_b = log_q_T.gather(-1, top), log_projected.gather(-1, top)
        rest_T = (log_q_T.exp().sum(-1) - log_a.exp().sum(-1)).clamp_min(0)
        rest_S = (log_q_S.exp().sum(-1) - log_b.exp().sum(-1)).clamp_min(0)
        log_a = torch.cat([log_a, rest_T.log().unsqueeze(-1)], -1)
        log_b = torch.cat([log_b, rest_S.log().unsqueeze(-1)], -1)
    # only where no student mass arrives (log 0): a real small probability keeps its exact log
    log_b = torch.where(log_b > -math.inf, log_b, torch.full_like(log_b, math.log(floor)))
    rows = generalised_kl(log_a, log_b)
    return masked_mean(scale_rows_by_t2(rows, tau), alignment.group_mask.to(rows.device))


_LOSSES = {
    "gold": (gold_loss, GoldParams, "T²-scaled GOLD hybrid over aligned token groups: KL on matched tokens + ULD"),
    "xtoken": (xtoken_loss, XTokenParams, "T²-scaled KL(teacher ‖ student projected into the teacher's vocabulary)"),
}


@hookimpl
def declare_components() -> list[ComponentInfo]:
    """Declare the cross-tokenizer losses of this module."""
    return [
        ComponentInfo(kind="aligned_kd_loss", name=name, params=params, summary=summary)
        for name, (_, params, summary) in _LOSSES.items()
    ]


@hookimpl
def compute_aligned_kd_loss(
    name: str,
    logits_S: Tensor,
    logits_T: Tensor,
    alignment: TokenAlignment,
    temperature: Temperature,
    params: BaseModel | None,
) -> Tensor | None:
    """Return the cross-tokenizer loss ``name`` if this module provides it, else None."""
    entry = _LOSSES.get(name)
    if entry is None:
        return None
    function, params_model, _ = entry
    options = resolve_params(params_model, params).model_dump()
    return function(logits_S, logits_T, alignment, temperature=temperature, **options)


__all__ = [
    "GoldParams",
    "XTokenParams",
    "compute_aligned_kd_loss",
    "declare_components",
    "generalised_kl",
    "gold_loss",
    "log_project_to_teacher",
    "sorted_l1",
    "xtoken_loss",
]
