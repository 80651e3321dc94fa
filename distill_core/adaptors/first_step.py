"""The first-step checks: one function, run on the first micro-batch of each task.

The adaptors' dicts are checked against their contract and against each other, and every match's
student feature against its projection, before any loss runs (so an error names the adaptor, key or
match, not a line deep in a plugin); after the loss ran, every term must be a floating-point scalar
with a gradient path to the student. Later steps skip all of it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from distill_core.adaptors.checks import check_adaptor_output, check_pair
from distill_core.adaptors.contract import as_list, select_layers
from distill_core.adaptors.logits import is_chunked
from distill_core.errors import AdaptorError, DistillError, PluginError
from distill_core.step import MicroBatch, StepLoss

if TYPE_CHECKING:
    from distill_core.terms.loss import DistillationLoss

__all__ = ["check_terms", "checked_first_step", "checked_plain_step", "losses_for_check"]


def losses_for_check(results: Any, role: str, used: bool, setting: str) -> Any:
    """The adaptor's dict as the contract check should see it.

    Unused ``losses`` (their weight is 0) are dropped, so unlabelled data, where Hugging Face models
    return ``loss=None``, works with the usual ``{"losses": [outputs.loss]}`` adaptor. Used ones that
    are None get a message naming the likely cause.
    """
    if not isinstance(results, Mapping) or "losses" not in results:
        return results
    if not used:
        return {key: value for key, value in results.items() if key != "losses"}
    for index, loss in enumerate(as_list(results["losses"])):
        if loss is None:
            raise AdaptorError(
                f"{role}['losses'][{index}] is None: the model returned no loss, most likely because the batch has "
                f"no labels. Add labels to the batch, or set {setting} (then distill ignores 'losses')"
            )
    return results


def checked_first_step(
    compute: Callable[[], StepLoss], loss: DistillationLoss, results_S: Any, micro: MicroBatch
) -> StepLoss:
    """Check a task's first micro-batch around ``compute()`` (the loss of that micro-batch)."""
    routing, task = loss.routing, micro.task
    role_S = routing.role_S(task)
    check_adaptor_output(
        losses_for_check(results_S, role_S, loss.use_hard_label, "DistillationConfig.hard_label_weight=0"), role_S
    )
    if loss.kd is not None and not getattr(loss.kd, "aligned", False):  # aligned KD: two vocabularies by design
        for key, output in micro.teacher.items():
            check_pair(results_S, output.logits, routing.role_T(key), needs_logits=True, vocab_size=loss.kd_vocab_size)
        first = next(iter(micro.teacher))
        _check_kd_masks(results_S, micro.teacher[first].logits, role_S, routing.role_T(first))
    for bound in loss.matches:
        spec = bound.spec
        bound.check_student_feature(select_layers(results_S, spec.feature, spec.layer_S, "adaptor_S", bound.label))
    for bound in loss.custom:
        feature_S = loss.capture.outputs.get(("student", bound.spec.module_S))
        if feature_S is not None:  # a submodule that did not run is named when the term takes its output
            bound.check_student_feature(feature_S)
    result = compute()
    check_terms(result.terms, loss)
    return result


def checked_plain_step(compute: Callable[[], StepLoss], results: Any, role: str) -> StepLoss:
    """The first-step check of plain training (:class:`~distill_core.distillers.BasicTraining`)."""
    check_adaptor_output(losses_for_check(results, role, True, "labels in every batch"), role)
    return compute()


def _check_kd_masks(results_S: Mapping[str, Any], view_T: Any, role_S: str, role_T: str) -> None:
    """Token-level KD counts a step's positions from the teacher's mask, before the student runs."""
    logits = [results_S["logits_hidden"]] if is_chunked(results_S) else as_list(results_S.get("logits"))
    if not logits or logits[0].dim() != 3:
        return
    mask_S, mask_T = results_S.get("logits_mask"), view_T.mask
    if mask_S is not None and mask_T is None:
        raise AdaptorError(
            f"{role_S} returns 'logits_mask' but {role_T} does not: token-level KD averages over the valid "
            f"positions of the whole optimisation step, counted from the teacher's outputs before the student "
            f"runs; return the same 'logits_mask' from {role_T}"
        )
    if mask_S is not None and not torch.equal(mask_S != 0, mask_T.to(mask_S.device) != 0):
        raise AdaptorError(
            f"{role_S} and {role_T} return different 'logits_mask' tensors; KD compares the same positions of "
            f"both models, so return the same mask from both adaptors"
        )


def check_terms(terms: tuple[torch.Tensor, ...], loss: DistillationLoss) -> None:
    """Every loss a plugin returned must be a floating-point scalar tensor, with a gradient path.

    Otherwise the error would come from ``backward()`` ("grad can be implicitly created only for
    scalar outputs", "element 0 of tensors does not require grad"), naming neither the match nor
    the plugin.
    """
    sources = loss.term_sources()
    for term, (where, component) in zip(terms, sources):
        if isinstance(term, torch.Tensor) and term.dim() == 0 and term.is_floating_point():
            continue
        got = (
            f"a tensor of shape {tuple(term.shape)} and dtype {term.dtype}"
            if isinstance(term, torch.Tensor)
            else f"a {type(term).__name__}"
        )
        provider = "" if component is None else f": plugin {component.plugin!r} ({component.distribution})"
        raise PluginError(
            f"{where}{provider} returned {got}; a loss must be a floating-point scalar tensor. Reduce it "
            f"inside the loss (e.g. .mean() over the unmasked positions)"
        )
    if torch.is_grad_enabled() and terms and not any(term.requires_grad for term in terms):
        raise DistillError(
            f"none of the loss terms ({', '.join(where for where, _ in sources)}) has a gradient path to the "
            f"student: adaptor_S returned tensors without gradient (detached, or computed under torch.no_grad "
            f"or inference_mode), so training would change nothing; return the student's outputs as the model "
            f"gave them"
        )
