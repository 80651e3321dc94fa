"""The adaptor contract's keys for generative models: each mistake is named with the fix."""

from __future__ import annotations

import functools

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from distill_core import AdaptorError, IntermediateMatch
from distill_core import adaptors
from distill_core.adaptors import ADAPTOR_KEYS, FEATURE_KEYS, check_adaptor_output, check_pair
from distill_core.config import FEATURES

B, L_ENC, L_DEC, H, D, V = 2, 6, 4, 2, 8, 10


def encoder_decoder_results() -> dict:
    return {
        "logits": torch.zeros(B, L_DEC, V),
        "logits_mask": torch.ones(B, L_DEC, dtype=torch.bool),
        "encoder_hidden": [torch.zeros(B, L_ENC, D)] * 3,
        "decoder_hidden": (torch.zeros(B, L_DEC, D),) * 3,
        "encoder_attention": [torch.zeros(B, H, L_ENC, L_ENC)] * 2,
        "decoder_attention": [torch.zeros(B, H, L_DEC, L_DEC)] * 2,
        "cross_attention": [torch.zeros(B, H, L_DEC, L_ENC)] * 2,
        "inputs_mask": torch.ones(B, L_ENC),
        "masks": {
            "encoder_hidden": torch.ones(B, L_ENC),
            "decoder_hidden": torch.ones(B, L_DEC, dtype=torch.long),
            "decoder_attention": torch.ones(B, L_DEC, L_DEC),
            "cross_attention": torch.ones(B, L_DEC, L_ENC, dtype=torch.bool),
        },
    }


def chunked_results(rows: int = L_DEC, width: int = D, vocab: int = V) -> dict:
    return {
        "logits_hidden": torch.zeros(B, rows, width),
        "logits_head": nn.Linear(width, vocab, bias=False),
        "logits_mask": torch.ones(B, rows, dtype=torch.bool),
    }


def test_well_formed_generative_outputs_pass() -> None:
    """They pass because they fit, not because nothing is looked at: each of their masks, one
    position short, is refused by name."""
    check_adaptor_output(encoder_decoder_results(), "adaptor_T")
    check_adaptor_output(chunked_results(), "adaptor_S")
    masks = encoder_decoder_results()["masks"]
    for feature, mask in masks.items():
        with pytest.raises(AdaptorError, match=rf"adaptor_T\['masks'\]\['{feature}'\] of shape .* does not fit"):
            check_adaptor_output({**encoder_decoder_results(), "masks": {**masks, feature: mask[:, :-1]}}, "adaptor_T")
    with pytest.raises(AdaptorError, match=r"adaptor_S\['logits_mask'\] of shape \(2, 3\) must match"):
        check_adaptor_output(changed(chunked_results(), logits_mask=torch.ones(B, L_DEC - 1).bool()), "adaptor_S")


def test_feature_keys_are_the_config_features_and_adaptor_keys() -> None:
    assert set(FEATURE_KEYS) == set(FEATURES)
    assert set(FEATURE_KEYS) | {"logits_hidden", "logits_head", "masks"} <= set(ADAPTOR_KEYS)
    # The contract's names for a match's feature field are the config's, in the same order.
    assert adaptors.FEATURES == FEATURES


def changed(base: dict, **changes) -> dict:
    results = {**base}
    for key, value in changes.items():
        if value is None:
            results.pop(key, None)
        else:
            results[key] = value
    return results


def with_masks(**masks) -> dict:
    results = encoder_decoder_results()
    return {**results, "masks": {**results["masks"], **masks}}


@pytest.mark.parametrize(
    ("results", "pattern"),
    [
        (
            changed(encoder_decoder_results(), encoder_hidden=torch.zeros(B, L_ENC, D)),
            r"adaptor_S\['encoder_hidden'\] must be a list/tuple with one tensor per layer, got a single tensor "
            r"of shape \(2, 6, 8\); wrap it",
        ),
        (
            changed(encoder_decoder_results(), decoder_hidden=[torch.zeros(B, L_DEC, D), "layer"]),
            r"adaptor_S\['decoder_hidden'\] must be a tensor or a list/tuple of tensors, but item 1 is str",
        ),
        (
            changed(encoder_decoder_results(), masks=[torch.ones(B, L_DEC)]),
            r"adaptor_S\['masks'\] must be a dict \{feature name: mask\}.*got list",
        ),
        (
            with_masks(decoder_hiden=torch.ones(B, L_DEC)),
            r"adaptor_S\['masks'\] has key 'decoder_hiden'; did you mean 'decoder_hidden'\? Its keys must be "
            r"feature names: hidden, ",
        ),
        (with_masks(decoder_hidden=[1, 1]), r"adaptor_S\['masks'\]\['decoder_hidden'\] must be a tensor, got list"),
        (
            with_masks(encoder_hidden=torch.ones(B, L_ENC, 1)),
            r"adaptor_S\['masks'\]\['encoder_hidden'\] must be \(B, L\), got shape \(2, 6, 1\)",
        ),
        (
            with_masks(cross_attention=torch.ones(B, L_DEC)),
            r"adaptor_S\['masks'\]\['cross_attention'\] must be \(B, L_dec, L_enc\).*got shape \(2, 4\)",
        ),
        (
            with_masks(decoder_hidden=torch.ones(B, L_ENC)),
            r"adaptor_S\['masks'\]\['decoder_hidden'\] of shape \(2, 6\) does not fit "
            r"adaptor_S\['decoder_hidden'\]\[0\] of shape \(2, 4, 8\): expected \(2, 4\)",
        ),
        (
            with_masks(cross_attention=torch.ones(B, L_ENC, L_DEC)),
            r"\['cross_attention'\] of shape \(2, 6, 4\) does not fit .* of shape \(2, 2, 4, 6\): expected \(2, 4, 6\)",
        ),
        (
            changed(chunked_results(), logits_hidden=torch.zeros(B * L_DEC, D), logits_mask=None),
            r"adaptor_S\['logits_hidden'\] must be the final hidden states \(B, L, D\), got shape \(8, 8\)",
        ),
        (changed(chunked_results(), logits_hidden=[torch.zeros(B, 1, D)]), r"\['logits_hidden'\] must be a tensor"),
        (
            changed(chunked_results(), logits_head=None),
            r"adaptor_S returned 'logits_hidden' without 'logits_head'; chunked token KD needs both",
        ),
        (
            changed(chunked_results(), logits_hidden=None, logits_mask=None),
            r"adaptor_S returned 'logits_head' without 'logits_hidden'",
        ),
        (
            changed(chunked_results(), logits_head=nn.ReLU()),
            r"adaptor_S\['logits_head'\] must be the output head, an nn.Module with a 2-D weight \(V, D\).*got ReLU",
        ),
        (
            changed(chunked_results(), logits_head=nn.Linear(D + 1, V)),
            r"\['logits_head'\] has weight of shape \(10, 9\) \(V, D\), which does not fit 'logits_hidden' of width "
            r"8.*after the final norm",
        ),
        (
            changed(chunked_results(), logits_mask=torch.ones(B, L_DEC + 1)),
            r"adaptor_S\['logits_mask'\] of shape \(2, 5\) must match the first two dimensions of 'logits_hidden' "
            r"\(B, L, D\) of shape \(2, 4, 8\)",
        ),
        (
            changed(chunked_results(), logit_head=nn.Linear(D, V)),
            r"unknown key 'logit_head'; did you mean 'logits_head'",
        ),
    ],
)
def test_each_new_key_is_checked(results, pattern) -> None:
    with pytest.raises(AdaptorError, match=pattern):
        check_adaptor_output(results, "adaptor_S")


def test_self_attention_masks_may_be_pair_masks_and_unreturned_features_are_not_checked() -> None:
    check_adaptor_output(with_masks(encoder_attention=torch.ones(B, L_ENC, L_ENC)), "adaptor_S")
    # a pair mask is still checked against the maps it masks
    with pytest.raises(AdaptorError, match=r"\['masks'\]\['encoder_attention'\] of shape \(2, 6, 4\) does not fit"):
        check_adaptor_output(with_masks(encoder_attention=torch.ones(B, L_ENC, L_DEC)), "adaptor_S")
    # masks of features the adaptor does not return have nothing to fit, until the feature comes
    unreturned = changed(with_masks(hidden=torch.ones(B, 3)), encoder_hidden=None)
    check_adaptor_output(unreturned, "adaptor_S")
    with pytest.raises(AdaptorError, match=r"\['masks'\]\['hidden'\] of shape \(2, 3\) does not fit"):
        check_adaptor_output({**unreturned, "hidden": [torch.zeros(B, L_ENC, D)]}, "adaptor_S")


# -- check_pair -------------------------------------------------------------------------------------
def dense_results(rows: int = L_DEC, vocab: int = V) -> dict:
    return {"logits": torch.zeros(B, rows, vocab)}


@pytest.mark.parametrize(
    ("student", "teacher"),
    [
        (functools.partial(chunked_results, width=8), functools.partial(chunked_results, width=16)),
        (chunked_results, dense_results),
        (dense_results, functools.partial(chunked_results, width=16)),
    ],
)
def test_chunked_pairs_compare_rows_and_vocabulary_not_widths(student, teacher) -> None:
    check_pair(student(), teacher(), "adaptor_T", needs_logits=True)  # other hidden widths: accepted
    with pytest.raises(AdaptorError, match=r"logits 0: the student's positions \(2, 4\) .* \(2, 5\)"):
        check_pair(student(), teacher(rows=L_DEC + 1), "adaptor_T", needs_logits=True)
    with pytest.raises(AdaptorError, match=r"logits 0: the student has 10 outputs .* the teacher \(adaptor_T\) has 11"):
        check_pair(student(), teacher(vocab=V + 1), "adaptor_T", needs_logits=True)


def test_chunked_pairs_with_other_rows_or_vocabularies_fail() -> None:
    with pytest.raises(AdaptorError, match=r"logits 0: the student's positions \(2, 4\) \(logits_hidden .*\) differ"):
        check_pair(chunked_results(), chunked_results(rows=L_DEC + 1), "adaptor_T", needs_logits=True)
    with pytest.raises(
        AdaptorError,
        match=r"the student has 10 outputs .* but the teacher \(adaptor_T\) has 12 .*"
        r"DistillationConfig.kd_vocab_size=N",
    ):
        check_pair(chunked_results(), {"logits": torch.zeros(B, L_DEC, V + 2)}, "adaptor_T", needs_logits=True)


def test_a_padded_vocabulary_pairs_with_vocab_size() -> None:
    padded = chunked_results(vocab=V + 6)
    with pytest.raises(
        AdaptorError, match=r"the student has 10 outputs .* has 16 .* DistillationConfig.kd_vocab_size=N"
    ):
        check_pair(chunked_results(), padded, "adaptor_T", needs_logits=True)
    check_pair(chunked_results(), padded, "adaptor_T", needs_logits=True, vocab_size=V)
    check_pair(
        {"logits": torch.zeros(B, L_DEC, V)},
        {"logits": torch.zeros(B, L_DEC, V + 6)},
        "adaptor_T",
        needs_logits=True,
        vocab_size=V,
    )
    with pytest.raises(
        AdaptorError,
        match=r"vocab_size=11 but the student has only 10 outputs; vocab_size can be at "
        r"most 10",
    ):
        check_pair(chunked_results(), padded, "adaptor_T", needs_logits=True, vocab_size=V + 1)


def test_missing_kd_outputs_mention_the_chunked_keys() -> None:
    with pytest.raises(AdaptorError, match=r"adaptor_S returned no 'logits'.*'logits_hidden' and 'logits_head'"):
        check_pair({}, chunked_results(), "adaptor_T", needs_logits=True)


# -- config -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("feature", FEATURES)
def test_every_feature_is_a_valid_match_feature(feature) -> None:
    assert IntermediateMatch(layer_T=1, layer_S=1, feature=feature, loss="hidden_mse").feature == feature


def test_an_unknown_feature_suggests_the_closest() -> None:
    with pytest.raises(
        ValidationError,
        match=r"unknown feature 'decoder_hiden'; did you mean 'decoder_hidden'\? "
        r"Known: hidden, attention, encoder_hidden",
    ):
        IntermediateMatch(layer_T=1, layer_S=1, feature="decoder_hiden", loss="hidden_mse")
