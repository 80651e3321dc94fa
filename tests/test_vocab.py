"""Teacher and student vocabularies are checked at setup: sizes, tokenizers, padded vocabularies."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

from distill_core.vocab import VocabularyMismatchError, check_vocabularies, output_vocab_size
from tests.tiny_lm import VOCAB, tiny_bart, tiny_gpt2, tiny_llama, tiny_t5


def tokenizer(tokens: list[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer built in memory (nothing is downloaded): id i is tokens[i]."""
    vocab = {token: index for index, token in enumerate(tokens)}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="[UNK]")), unk_token="[UNK]")


WORDS = ["[UNK]", "[PAD]"] + [f"w{i}" for i in range(VOCAB - 2)]


def classifier(classes: int) -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=classes,
    )
    return BertForSequenceClassification(config)


@pytest.mark.parametrize("build", [tiny_gpt2, tiny_llama, tiny_t5, tiny_bart])
def test_output_vocab_size_of_language_models(build) -> None:
    assert output_vocab_size(build()) == VOCAB
    assert output_vocab_size(build(vocab=VOCAB + 28)) == VOCAB + 28


def test_same_vocabulary_passes_and_returns_its_size() -> None:
    assert check_vocabularies(tiny_gpt2(width=48), tiny_llama()) == VOCAB
    assert (
        check_vocabularies(tiny_t5(), tiny_bart(), tokenizer_T=tokenizer(WORDS), tokenizer_S=tokenizer(WORDS)) == VOCAB
    )


def test_different_output_sizes_stop_with_both_sizes_and_the_fix() -> None:
    with pytest.raises(
        VocabularyMismatchError,
        match=r"the teacher outputs 128 token logits and the student 100.*"
        r"teacher's tokenizer.*vocab_size=N",
    ):
        check_vocabularies(tiny_gpt2(vocab=128), tiny_llama())


def test_classifiers_are_not_vocabularies() -> None:
    assert output_vocab_size(classifier(3)) is None
    assert check_vocabularies(classifier(3), classifier(5)) is None
    assert check_vocabularies(classifier(3), tiny_gpt2()) is None  # only one side has a vocabulary


def test_tokenizers_must_map_ids_to_the_same_tokens() -> None:
    other = list(WORDS)
    other[7], other[9] = "hello", "world"
    with pytest.raises(
        VocabularyMismatchError,
        match=r"differ at id 7: the teacher's token is 'w5', the student's "
        r"'hello'.*same tokenizer",
    ):
        check_vocabularies(tiny_gpt2(), tiny_llama(), tokenizer_T=tokenizer(WORDS), tokenizer_S=tokenizer(other))


def test_a_token_missing_from_one_tokenizer_is_named() -> None:
    with pytest.raises(
        VocabularyMismatchError,
        match=r"differ at id 98: the teacher's token is 'w96', the student's "
        r"None \(None: no token has that id\)",
    ):
        check_vocabularies(tiny_gpt2(), tiny_llama(), tokenizer_T=tokenizer(WORDS), tokenizer_S=tokenizer(WORDS[:98]))


def test_tokenizers_alone_are_compared_even_without_language_models() -> None:
    with pytest.raises(VocabularyMismatchError, match=r"differ at id 100: the teacher's token is 'extra'"):
        check_vocabularies(
            classifier(3), classifier(3), tokenizer_T=tokenizer(WORDS + ["extra"]), tokenizer_S=tokenizer(WORDS)
        )


def test_one_tokenizer_without_the_other_is_an_error() -> None:
    with pytest.raises(ValueError, match="pass both tokenizer_T and tokenizer_S"):
        check_vocabularies(tiny_gpt2(), tiny_llama(), tokenizer_T=tokenizer(WORDS))


def test_a_padded_vocabulary_compares_its_first_n_entries() -> None:
    teacher, student = tiny_gpt2(vocab=128), tiny_llama(vocab=VOCAB)  # the teacher's head is padded to 128
    padded_words = WORDS + [f"<pad{i}>" for i in range(28)]
    assert check_vocabularies(teacher, student, vocab_size=VOCAB) == VOCAB
    assert (
        check_vocabularies(
            teacher, student, tokenizer_T=tokenizer(padded_words), tokenizer_S=tokenizer(WORDS), vocab_size=VOCAB
        )
        == VOCAB
    )
    other = list(WORDS)
    other[42] = "changed"
    with pytest.raises(VocabularyMismatchError, match=r"differ at id 42"):
        check_vocabularies(
            teacher, student, tokenizer_T=tokenizer(padded_words), tokenizer_S=tokenizer(other), vocab_size=VOCAB
        )


def test_vocab_size_larger_than_a_model_is_an_error() -> None:
    with pytest.raises(
        VocabularyMismatchError,
        match=r"vocab_size=101 is larger than the student's output size 100; "
        r"the shared vocabulary can have at most 100 entries",
    ):
        check_vocabularies(tiny_gpt2(vocab=128), tiny_llama(), vocab_size=101)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_vocab_size_must_be_a_positive_integer(bad) -> None:
    with pytest.raises(ValueError, match=r"Expected argument `vocab_size` to be a positive integer but got"):
        check_vocabularies(tiny_gpt2(), tiny_llama(), vocab_size=bad)


@pytest.mark.parametrize(
    ("kd_vocab_size", "advice"),
    [
        (None, r"the teacher outputs 128 token logits and the student 100.*set DistillationConfig.kd_vocab_size=N "),
        (101, r"kd_vocab_size=101 is larger than the student's output size 100"),
    ],
)
def test_the_distiller_s_vocabulary_error_names_the_config_field(tmp_path, kd_vocab_size, advice) -> None:
    """The advice named check_vocabularies' argument (vocab_size=N), which a config does not have."""
    from distill_core import DistillationConfig, Distillation, TrainingConfig

    training = TrainingConfig(output_dir=str(tmp_path), progress_bar=False, device="cpu")
    distillation = DistillationConfig(kd_loss_type="kl", kd_vocab_size=kd_vocab_size)
    with pytest.raises(VocabularyMismatchError, match=advice):
        Distillation(training, distillation, tiny_gpt2(vocab=128), tiny_llama(), None, None)
    assert DistillationConfig(kd_vocab_size=100).kd_vocab_size == 100  # the field the advice names
