"""Cross-tokenizer distillation: byte alignment on real tokenizers, the vocabulary match, the losses.

SmolLM2's byte-level BPE (from the demo's cached copy, else its GGUF file) against MiniLM's
WordPiece; both are optional packages, so the tests that need one skip without it.
"""

from __future__ import annotations

import time
import tomllib
from pathlib import Path

import pytest
import torch

from distill_core import ComponentInfo, get_loss, hookimpl, list_components
from distill_core.cross_tokenizer import (
    VocabularyPair,
    align_byte_ends,
    align_encodings,
    align_texts,
    char_to_byte_table,
    encode_for_alignment,
    group_log_probs,
    token_key,
)
from distill_plugins_losses import cross_tokenizer as cross_tokenizer_plugin
from distill_plugins_losses.cross_tokenizer import generalised_kl, sorted_l1

REPO = Path(__file__).resolve().parents[1]
TEXTS = [
    "Héllo naïve café, déjà vu!",
    "東京は日本の首都です。",
    "Party time 😀🎉 with friends",
    "  two leading spaces and one",
    "Pi is 3.14159 and 12345 + 678 = 13023",
]


def _transformers():
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    return transformers


@pytest.fixture(scope="module")
def smollm2():
    transformers = _transformers()
    from distill_core.demo.assets import SMOLLM2, MissingDependencyError
    from distill_core.demo.lm.models import teacher_key
    from distill_core.demo.teacher_store import cache_root

    cached = cache_root() / "teachers" / teacher_key()
    if (cached / "tokenizer.json").is_file():
        return transformers.AutoTokenizer.from_pretrained(str(cached))
    try:
        path = SMOLLM2.path()
    except MissingDependencyError as exc:
        pytest.skip(str(exc))
    return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.fixture(scope="module")
def minilm():
    transformers = _transformers()
    from distill_core.demo.assets import TEACHER_MODEL, MissingDependencyError

    try:
        return transformers.AutoTokenizer.from_pretrained(str(TEACHER_MODEL.path()))
    except MissingDependencyError as exc:
        pytest.skip(str(exc))


@pytest.fixture
def aligned_losses(register_plugin):
    """The built-in cross-tokenizer losses, registered at runtime when the installed metadata predates them."""
    if not any(component.name == "gold" for component in list_components()):
        register_plugin(cross_tokenizer_plugin, "losses_cross_tokenizer")


def test_the_losses_are_registered_as_a_builtin_entry_point():
    entry_points = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["entry-points"]
    assert entry_points["distill"]["losses_cross_tokenizer"] == "distill_plugins_losses.cross_tokenizer"


# ---- alignment --------------------------------------------------------------------------------


def test_character_offsets_become_utf8_byte_offsets():
    assert char_to_byte_table("aé東😀").tolist() == [0, 1, 3, 6, 10]


def test_groups_close_where_both_sides_end_at_the_same_byte():
    ends_S = torch.tensor([[2, 5, 5, 9, 0]])  # two tokens ending at byte 5: a split character
    ends_T = torch.tensor([[0, 1, 2, 9, 0]])  # a special token first, padding last
    alignable_S = torch.tensor([[True, True, True, True, False]])
    alignable_T = torch.tensor([[False, True, True, True, False]])
    ids_S, ids_T, counts, ends = align_byte_ends(ends_S, alignable_S, ends_T, alignable_T)
    assert ids_S.tolist() == [[0, 1, 1, 1, -1]]
    assert ids_T.tolist() == [[-1, 0, 0, 1, -1]]
    assert counts.tolist() == [2] and ends.tolist() == [[2, 9]]


def _check_coverage(texts, encoding_S, encoding_T, alignment, pair):
    """Every byte of every text lies in exactly one group, and each group has tokens on both sides."""
    from distill_core.cross_tokenizer import token_byte_spans

    spans = [
        token_byte_spans(texts, encoding, key_lengths=None if pair is None else pair.key_lengths(side))
        for encoding, side in ((encoding_S, "S"), (encoding_T, "T"))
    ]
    for row, text in enumerate(texts):
        count = int(alignment.num_groups[row])
        ends = alignment.group_ends[row, :count]
        starts = torch.cat([torch.zeros(1, dtype=ends.dtype), ends[:-1]])
        assert bool((ends > starts).all())  # non-empty and in order: a partition of [0, last end)
        assert int(ends[-1]) == len(text.encode("utf-8")), text  # ... which is the whole text
        owners = torch.zeros(len(text.encode("utf-8")), dtype=torch.int64)
        for start, end in zip(starts.tolist(), ends.tolist()):
            owners[start:end] += 1
        assert bool((owners == 1).all()), text
        for side, group_ids in zip(spans, (alignment.group_ids_S, alignment.group_ids_T)):
            ids = group_ids[row]
            assert bool(((ids >= 0) == side.alignable[row]).all()), text  # every real token has a group
            kept = ids >= 0
            assert torch.bincount(ids[kept], minlength=count).min() >= 1, text
            assert bool((side.starts[row][kept] >= starts[ids[kept]]).all()), text
            assert bool((side.ends[row][kept] <= ends[ids[kept]]).all()), text


@pytest.mark.parametrize("exact_split_characters", [False, True])
@pytest.mark.parametrize("student_first", [True, False])
def test_bpe_and_wordpiece_groups_cover_every_byte(smollm2, minilm, student_first, exact_split_characters):
    tokenizer_S, tokenizer_T = (smollm2, minilm) if student_first else (minilm, smollm2)
    pair = VocabularyPair.from_tokenizers(tokenizer_S, tokenizer_T) if exact_split_characters else None
    encoding_S = encode_for_alignment(tokenizer_S, TEXTS)
    encoding_T = encode_for_alignment(tokenizer_T, TEXTS)
    alignment = align_encodings(TEXTS, encoding_S, encoding_T, vocabularies=pair)
    assert not alignment.positional
    _check_coverage(TEXTS, encoding_S, encoding_T, alignment, pair)
    # MiniLM's [CLS] and [SEP] (empty offsets) belong to no group
    wordpiece_ids = alignment.group_ids_T if student_first else alignment.group_ids_S
    assert bool((wordpiece_ids[:, 0] == -1).all())


def test_digits_split_differently_are_grouped_where_both_sides_end(smollm2, minilm):
    text = "Pi is 3.14159 and 12345"
    encoding_S, encoding_T = encode_for_alignment(smollm2, [text]), encode_for_alignment(minilm, [text])
    alignment = align_encodings([text], encoding_S, encoding_T)
    count = int(alignment.num_groups[0])
    number = [g for g in range(count) if int(alignment.group_ends[0, g]) > text.index("12345")]
    assert int(alignment.group_ends[0, number[-1]]) == len(text.encode("utf-8"))
    per_group_S = [int((alignment.group_ids_S[0] == g).sum()) for g in number]
    per_group_T = [int((alignment.group_ids_T[0] == g).sum()) for g in number]
    # SmolLM2 writes one token per digit, WordPiece "123" "##45": groups of several digits against one
    assert sum(per_group_S) >= 5 and sum(per_group_T) == 2
    assert all(s > t == 1 for s, t in zip(per_group_S, per_group_T))


def test_a_bos_on_one_side_only_belongs_to_no_group(smollm2, minilm):
    encoding_S, encoding_T = encode_for_alignment(smollm2, TEXTS), encode_for_alignment(minilm, TEXTS)
    plain = align_encodings(TEXTS, encoding_S, encoding_T)
    with_bos = dict(encoding_S)
    batch = len(TEXTS)
    with_bos["input_ids"] = torch.cat([torch.full((batch, 1), smollm2.bos_token_id or 1), encoding_S["input_ids"]], 1)
    with_bos["attention_mask"] = torch.cat([torch.ones(batch, 1, dtype=torch.int64), encoding_S["attention_mask"]], 1)
    with_bos["special_tokens_mask"] = torch.cat([torch.ones(batch, 1, dtype=torch.int64),
                                                 encoding_S["special_tokens_mask"]], 1)
    with_bos["offset_mapping"] = torch.cat([torch.zeros(batch, 1, 2, dtype=torch.int64),
                                            encoding_S["offset_mapping"]], 1)
    shifted = align_encodings(TEXTS, with_bos, encoding_T)
    assert bool((shifted.group_ids_S[:, 0] == -1).all())
    assert torch.equal(shifted.group_ids_S[:, 1:], plain.group_ids_S)
    assert torch.equal(shifted.group_ids_T, plain.group_ids_T)


def test_padding_has_no_group_and_a_dropped_label_masks_its_group(smollm2, minilm):
    texts = ["short", "a much longer sentence with words"]
    encoding_S, encoding_T = encode_for_alignment(smollm2, texts), encode_for_alignment(minilm, texts)
    loss_mask_T = torch.ones_like(encoding_T["input_ids"])
    loss_mask_T[1, 1] = 0  # labels == -100 on the teacher's first real token of example 1
    alignment = align_encodings(texts, encoding_S, encoding_T, loss_mask_T=loss_mask_T)
    padded_S = encoding_S["attention_mask"] == 0
    assert bool(padded_S.any()) and bool((alignment.group_ids_S[padded_S] == -1).all())
    assert alignment.group_mask[1].tolist()[:2] == [False, True]
    assert alignment.group_mask[0].sum() == alignment.num_groups[0]


def test_without_offsets_tokens_are_paired_by_position_with_a_warning(minilm):
    encoding = encode_for_alignment(minilm, TEXTS[:2])
    no_offsets = {name: value for name, value in encoding.items() if name != "offset_mapping"}
    with pytest.warns(UserWarning, match="paired by position"):
        alignment = align_encodings(TEXTS[:2], no_offsets, encoding)
    assert alignment.positional
    real = encoding["attention_mask"].bool() & ~encoding["special_tokens_mask"].bool()
    assert alignment.num_groups.tolist() == real.sum(1).tolist()
    assert torch.equal(alignment.group_ids_S, alignment.group_ids_T)


def test_aligner_time_per_thousand_tokens(smollm2, minilm):
    texts = [" ".join(TEXTS[(row + k) % len(TEXTS)] for k in range(4)) for row in range(32)]
    encoding_S, encoding_T = encode_for_alignment(smollm2, texts), encode_for_alignment(minilm, texts)
    tokens = int(encoding_S["attention_mask"].sum() + encoding_T["attention_mask"].sum())
    align_encodings(texts, encoding_S, encoding_T)  # warm-up
    repeats = 20
    start = time.perf_counter()
    for _ in range(repeats):
        align_encodings(texts, encoding_S, encoding_T)
    per_thousand = (time.perf_counter() - start) / repeats / tokens * 1000
    print(f"\naligner: {per_thousand * 1000:.2f} ms per 1,000 tokens (both sides counted; "
          f"{tokens} tokens, batch of {len(texts)}, tokenisation excluded)")
    assert per_thousand < 1.0  # seconds; a loop per token in Python would be far slower


# ---- vocabularies -----------------------------------------------------------------------------


def test_token_keys_unify_leading_space_markers():
    assert token_key("Ġhello", "byte_level") == token_key("▁hello", "metaspace") == b" hello"
    assert token_key("hello", "wordpiece") == b" hello" and token_key("##llo", "wordpiece") == b"llo"
    assert token_key("Ã©", "byte_level") == "é".encode() and token_key("<0xE9>", "metaspace") == b"\xe9"


def test_multi_digit_tokens_are_unmatched_and_project_onto_their_leading_digit(smollm2, minilm):
    pair = VocabularyPair.from_tokenizers(minilm, smollm2)  # student WordPiece, teacher byte-level BPE
    three_digits = minilm.get_vocab()["123"]
    assert int(pair.class_S[three_digits]) == -1  # SmolLM2 has single digits only
    rows, cols, _ = pair.projection("cpu")
    targets = cols[rows == three_digits].tolist()
    # SmolLM2 writes " 123" as "Ġ" "1" "2" "3": its first token is the space, and W follows it
    assert [smollm2.convert_ids_to_tokens(t) for t in targets] == ["Ġ"]
    continuation = cols[rows == minilm.get_vocab()["##23"]].tolist()
    assert [smollm2.convert_ids_to_tokens(t) for t in continuation] == ["2"]


# ---- losses -----------------------------------------------------------------------------------


def test_chaining_multiplies_the_continuation_probabilities():
    log_probs = torch.log_softmax(torch.randn(1, 3, 5), -1)
    token_ids = torch.tensor([[1, 2, 4]])
    chained = group_log_probs(log_probs, token_ids, torch.tensor([[0, 0, 1]]), 2)
    expected = log_probs[0, 0] + log_probs[0, 1, 2]
    assert torch.allclose(chained[0, 0], expected) and torch.allclose(chained[0, 1], log_probs[0, 2])


def test_divergence_parts():
    log_p = torch.log_softmax(torch.randn(4, 7), -1)
    assert torch.allclose(generalised_kl(log_p, log_p), torch.zeros(4), atol=1e-7)
    probs = log_p.exp()
    assert torch.allclose(sorted_l1(probs, probs[:, torch.randperm(7)]), torch.zeros(4), atol=1e-7)


def _padded_sort_l1(probs_S, probs_T):
    """The definition: both sides padded with zeros to one width and sorted whole."""
    width = max(probs_S.shape[-1], probs_T.shape[-1])
    padded = [torch.nn.functional.pad(p, (0, width - p.shape[-1])) for p in (probs_S, probs_T)]
    return (padded[1].sort(-1, descending=True).values - padded[0].sort(-1, descending=True).values).abs().sum(-1)


@pytest.mark.parametrize("widths", [(5, 300), (300, 5), (40, 40)])
def test_sorted_l1_sorts_only_the_top_of_the_longer_side_and_keeps_value_and_gradient(widths):
    torch.manual_seed(0)
    logits_S = torch.randn(6, widths[0], requires_grad=True)
    probs_T = torch.softmax(3 * torch.randn(6, widths[1]), -1) * 0.7  # unmatched parts need not sum to 1
    values = []
    for loss in (sorted_l1, _padded_sort_l1):
        probs_S = torch.softmax(logits_S, -1) * 0.6
        value = loss(probs_S, probs_T)
        (grad,) = torch.autograd.grad(value.sum(), logits_S)
        values.append((value.detach(), grad))
    torch.testing.assert_close(values[0][0], values[1][0], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(values[0][1], values[1][1], rtol=1e-5, atol=1e-7)
    assert torch.equal(sorted_l1(probs_T[:, :0], probs_T), probs_T.sum(-1))


@pytest.mark.parametrize("which", ["smollm2", "minilm"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_with_the_same_tokenizer_the_losses_are_token_kl(request, aligned_losses, which, temperature):
    tokenizer = request.getfixturevalue(which)
    pair = VocabularyPair.from_tokenizers(tokenizer, tokenizer)
    assert pair.one_to_one
    alignment = align_texts(TEXTS[:3], tokenizer, tokenizer, vocabularies=pair)
    assert torch.equal(alignment.num_groups, (alignment.group_ids_S >= 0).sum(1))  # one token per group
    batch, length = alignment.group_ids_S.shape
    generator = torch.Generator().manual_seed(0)
    logits_T = 3 * torch.randn(batch, length, pair.size_T, generator=generator)
    kept = alignment.group_ids_S >= 0
    reference_S = (3 * torch.randn(batch, length, pair.size_S, generator=generator)).requires_grad_()
    reference = get_loss("kl")(reference_S, logits_T, kept, temperature=temperature)
    (reference_grad,) = torch.autograd.grad(reference, reference_S)
    for name, params in (("gold", {}), ("xtoken", {"top_k": None})):
        logits_S = reference_S.detach().clone().requires_grad_()
        value = get_loss(name, **params)(logits_S, logits_T, alignment, temperature=temperature)
        (grad,) = torch.autograd.grad(value, logits_S)
        assert abs(value.item() - reference.item()) < 1e-6, name
        assert torch.allclose(grad, reference_grad, atol=1e-6, rtol=0), name
    top_k = get_loss("xtoken")(reference_S, logits_T, alignment, temperature=temperature)
    assert float(top_k) <= float(reference) + 1e-6  # coarser bins never raise a KL


def test_across_tokenizers_the_losses_are_finite_and_train_the_student(aligned_losses, smollm2, minilm):
    pair = VocabularyPair.from_tokenizers(smollm2, minilm)
    alignment = align_texts(TEXTS, smollm2, minilm, vocabularies=pair)
    generator = torch.Generator().manual_seed(1)
    logits_S = torch.randn(*alignment.group_ids_S.shape, pair.size_S, generator=generator).requires_grad_()
    logits_T = torch.randn(*alignment.group_ids_T.shape, pair.size_T, generator=generator)
    logits_T[alignment.group_ids_T < 0] = float("nan")  # padding and specials must not leak
    for name in ("gold", "xtoken"):
        value = get_loss(name)(logits_S, logits_T, alignment)
        (grad,) = torch.autograd.grad(value, logits_S)
        assert torch.isfinite(value) and float(value) > 0, name
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, name
        assert bool((grad[alignment.group_ids_S < 0] == 0).all()), name


def test_a_third_party_plugin_adds_an_aligned_loss(register_plugin):
    class CountGroups:
        @hookimpl
        def declare_components(self):
            return [ComponentInfo(kind="aligned_kd_loss", name="group_count", summary="number of kept groups")]

        @hookimpl
        def compute_aligned_kd_loss(self, name, logits_S, logits_T, alignment, temperature, params):
            return alignment.group_mask.sum().float() if name == "group_count" else None

    register_plugin(CountGroups(), "test-group-count")
    alignment = align_byte_ends(torch.tensor([[1, 2]]), torch.tensor([[True, True]]),
                                torch.tensor([[2]]), torch.tensor([[True]]))
    from distill_core.cross_tokenizer import TokenAlignment, kept_groups

    ids_S, ids_T, counts, ends = alignment
    aligned = TokenAlignment(ids_S, ids_T, counts, kept_groups((ids_S, ids_T), (None, None), counts), ends)
    assert float(get_loss("group_count")(torch.zeros(1, 2, 3), torch.zeros(1, 1, 3), aligned)) == 1.0
    assert any(c.name == "group_count" and c.kind == "aligned_kd_loss" for c in list_components())
