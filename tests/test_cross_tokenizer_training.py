"""Cross-tokenizer distillation through train(): tiny Llamas with two different tokenizers, and bits per byte."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402

from distill_core import Distillation  # noqa: E402
from distill_core.config import DistillationConfig, TrainingConfig  # noqa: E402
from distill_core.cross_tokenizer import (  # noqa: E402
    VocabularyPair,
    bits_per_byte,
    encode_for_alignment,
    next_token_alignment,
)
from distill_core.registry import get_registry  # noqa: E402
from distill_core.step import StepInfo  # noqa: E402
from distill_core.vocab import VocabularyMismatchError  # noqa: E402
from distill_plugins_losses import cross_tokenizer as cross_tokenizer_plugin  # noqa: E402

SENTENCES = [
    "the cat sat on the mat",
    "the dog sat on the log",
    "a cat and a dog met on a mat",
    "dogs and cats like warm logs",
    "the mat was warm and the log was cold",
]
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


def _wrap(backend) -> PreTrainedTokenizerFast:
    from tokenizers.processors import TemplateProcessing

    backend.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", backend.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def word_tokenizer() -> PreTrainedTokenizerFast:
    """WordPiece over whole words (the teacher's): few, long tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    backend = Tokenizer(models.WordPiece(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordPieceTrainer(vocab_size=80, show_progress=False, special_tokens=SPECIALS)
    backend.train_from_iterator(SENTENCES, trainer)
    return _wrap(backend)


def byte_bpe_tokenizer() -> PreTrainedTokenizerFast:
    """A small byte-level BPE (the student's): words cut into several pieces."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=268,
        show_progress=False,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(SENTENCES, trainer)
    return _wrap(backend)


def tiny_llama(vocab_size: int, seed: int, hidden: int = 16) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, attn_implementation="eager",
    )
    return LlamaForCausalLM(config)


@pytest.fixture(scope="module")
def tokenizer_T():
    return word_tokenizer()


@pytest.fixture(scope="module")
def tokenizer_S():
    return byte_bpe_tokenizer()


@pytest.fixture(autouse=True)
def aligned_losses(register_plugin):
    """The built-in cross-tokenizer losses, registered at runtime when the installed metadata predates them."""
    if not get_registry().names("aligned_kd_loss"):
        register_plugin(cross_tokenizer_plugin, "losses_cross_tokenizer")


def train_config(tmp_path, **overrides) -> TrainingConfig:
    options = {"output_dir": str(tmp_path / "out"), "device": "cpu", "progress_bar": False, "log_steps": 1}
    return TrainingConfig(**{**options, **overrides})


def distiller(tmp_path, model_T, model_S, tokenizer_T, tokenizer_S, **config) -> Distillation:
    options = {"cross_tokenizer": {"loss": "gold"}, "temperature": 1.0}
    return Distillation(
        train_config(tmp_path), DistillationConfig(**{**options, **config}), model_T, model_S, None, None,
        tokenizer_T=tokenizer_T, tokenizer_S=tokenizer_S,
    )


def prepared_loss(distiller: Distillation, batch):
    """The StepLoss of one micro-batch as train() computes it, and the micro-batch."""
    with distiller:
        micro = distiller._session.source.prepare(batch, None, {})
        step = StepInfo(micro_batches=1, world_size=1, tokens=micro.tokens)
        return distiller.compute_loss(micro, 0.0, {}, step), micro


def test_the_two_tokenizers_cut_the_texts_differently(tokenizer_T, tokenizer_S):
    assert len(tokenizer_T) != len(tokenizer_S)
    assert len(tokenizer_T(SENTENCES[2])["input_ids"]) < len(tokenizer_S(SENTENCES[2])["input_ids"])


def test_cross_tokenizer_distillation_trains_the_student(tmp_path, tokenizer_T, tokenizer_S):
    model_T, model_S = tiny_llama(len(tokenizer_T), 0, hidden=32), tiny_llama(len(tokenizer_S), 1)
    trainer = distiller(tmp_path, model_T, model_S, tokenizer_T, tokenizer_S, hard_label_weight=0.5)
    batch = {"texts": SENTENCES[:4]}
    before_weights = [p.detach().clone() for p in model_S.parameters()]
    before, _ = prepared_loss(trainer, batch)
    optimizer = torch.optim.AdamW(model_S.parameters(), lr=3e-2)
    state = trainer.train(optimizer, dataloader=[batch] * 8, num_epochs=1)
    after, _ = prepared_loss(trainer, batch)
    assert state.global_step == 8
    assert trainer.term_names() == ["kd", "hard_label"]
    assert all(math.isfinite(float(t.detach())) for t in (*before.terms, *after.terms))
    assert float(after.terms[0].detach()) < float(before.terms[0].detach())
    assert float(after.total.detach()) < float(before.total.detach())
    assert any(not torch.equal(b, p) for b, p in zip(before_weights, model_S.parameters()))
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model_T.parameters())


def test_the_kd_term_is_the_aligned_loss_on_the_same_logits_and_alignment(tmp_path, tokenizer_T, tokenizer_S):
    model_T, model_S = tiny_llama(len(tokenizer_T), 0), tiny_llama(len(tokenizer_S), 1)
    trainer = distiller(tmp_path, model_T, model_S, tokenizer_T, tokenizer_S, temperature=2.0)
    texts = SENTENCES[1:4]
    loss, micro = prepared_loss(trainer, {"texts": texts})

    pair = VocabularyPair.from_tokenizers(tokenizer_S, tokenizer_T)
    encoding_S, encoding_T = encode_for_alignment(tokenizer_S, texts), encode_for_alignment(tokenizer_T, texts)
    labels_S = encoding_S["input_ids"].masked_fill(encoding_S["attention_mask"] == 0, -100)
    alignment = next_token_alignment(texts, encoding_S, encoding_T, labels_S=labels_S, vocabularies=pair)
    assert torch.equal(alignment.group_ids_S, micro.teacher[0].alignment.group_ids_S)
    assert int(alignment.group_mask.sum()) > 0
    with torch.no_grad():
        logits_S = model_S(input_ids=encoding_S["input_ids"], attention_mask=encoding_S["attention_mask"]).logits
        logits_T = model_T(input_ids=encoding_T["input_ids"], attention_mask=encoding_T["attention_mask"]).logits
    expected = cross_tokenizer_plugin.gold_loss(logits_S[:, :-1], logits_T[:, :-1], alignment, temperature=2.0)
    torch.testing.assert_close(loss.terms[0].detach(), expected, rtol=1e-5, atol=1e-6)


def test_with_the_same_tokenizer_the_term_is_token_kl(tmp_path, tokenizer_S):
    texts = ["the cat sat on the mat", "a dog met a cat"]  # different lengths: padding on the second
    encoding = encode_for_alignment(tokenizer_S, texts)
    labels = encoding["input_ids"].masked_fill(encoding["attention_mask"] == 0, -100)
    batch = {"input_ids": encoding["input_ids"], "attention_mask": encoding["attention_mask"], "labels": labels}
    results = {}
    for name, config in (
        ("aligned", {"cross_tokenizer": {"loss": "gold"}}),
        ("token", {"cross_tokenizer": None, "kd_loss_type": "kl", "chunked_token_kd": False}),
    ):
        model_T, model_S = tiny_llama(len(tokenizer_S), 0), tiny_llama(len(tokenizer_S), 1)
        trainer = distiller(tmp_path, model_T, model_S, tokenizer_S, tokenizer_S, temperature=2.0, **config)
        step_batch = batch
        if name == "aligned":  # the student's own encoding, with the texts and offsets for the alignment
            step_batch = {**batch, "texts": texts, "offset_mapping": encoding["offset_mapping"]}
        loss, _ = prepared_loss(trainer, step_batch)
        loss.terms[0].backward()
        results[name] = (loss.terms[0].detach(), [p.grad.clone() for p in model_S.parameters()])
    (value_aligned, grads_aligned), (value_token, grads_token) = results["aligned"], results["token"]
    torch.testing.assert_close(value_aligned, value_token, rtol=0, atol=1e-6)
    for grad_aligned, grad_token in zip(grads_aligned, grads_token):
        torch.testing.assert_close(grad_aligned, grad_token, rtol=1e-5, atol=1e-6)


def test_different_tokenizers_without_the_option_say_how_to_switch_it_on(tmp_path, tokenizer_T, tokenizer_S):
    model_T, model_S = tiny_llama(len(tokenizer_S), 0), tiny_llama(len(tokenizer_S), 1)  # same sizes, other tokens
    with pytest.raises(VocabularyMismatchError, match=r"cross_tokenizer=\{'loss': 'gold'\}"):
        Distillation(
            train_config(tmp_path), DistillationConfig(), model_T, model_S, None, None,
            tokenizer_T=tokenizer_T, tokenizer_S=tokenizer_S,
        )


def test_cross_tokenizer_kd_needs_both_tokenizers_and_texts(tmp_path, tokenizer_T, tokenizer_S):
    model_T, model_S = tiny_llama(len(tokenizer_T), 0), tiny_llama(len(tokenizer_S), 1)
    with pytest.raises(Exception, match="needs both tokenizers"):
        distiller(tmp_path, model_T, model_S, None, tokenizer_S)
    trainer = distiller(tmp_path, model_T, model_S, tokenizer_T, tokenizer_S)
    with pytest.raises(Exception, match=r"batch\['texts'\]"):
        prepared_loss(trainer, {"input_ids": torch.ones(1, 3, dtype=torch.long)})


def test_an_unknown_aligned_loss_gets_a_did_you_mean():
    with pytest.raises(ValueError, match="did you mean 'gold'"):
        DistillationConfig(cross_tokenizer={"loss": "gld"})
    with pytest.raises(ValueError, match="probability_shift"):
        DistillationConfig(cross_tokenizer={"loss": "gold"}, probability_shift=True)


# ---- bits per byte ----------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["teacher", "student"])
def test_bits_per_byte_is_the_total_nll_in_bits_over_the_bytes(which, tokenizer_T, tokenizer_S):
    tokenizer = tokenizer_T if which == "teacher" else tokenizer_S
    model = tiny_llama(len(tokenizer), 3)
    texts = ["the cat sat", "dogs like warm logs", "é"]  # 'é' is two bytes, unknown to the word tokenizer
    nats = 0.0
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text)["input_ids"]
            assert ids[0] == tokenizer.bos_token_id
            log_probs = model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
            nats -= sum(float(log_probs[t - 1, ids[t]]) for t in range(1, len(ids)))
    expected = nats / math.log(2) / (11 + 19 + 2)
    assert bits_per_byte(model, tokenizer, texts, batch_size=2) == pytest.approx(expected, rel=1e-5)


def test_bits_per_byte_takes_another_bos_or_none(tokenizer_S):
    """SmolLM2 names its chat marker <|im_start|> as BOS; prose is scored after <|endoftext|> instead."""
    import copy

    from tokenizers.processors import TemplateProcessing

    plain = copy.deepcopy(tokenizer_S)  # a tokenizer that adds no special token, as SmolLM2's
    plain.backend_tokenizer.post_processor = TemplateProcessing(single="$A")
    model = tiny_llama(len(plain), 4)
    texts = ["the cat sat", "dogs like warm logs"]
    assert plain(texts[0])["input_ids"][0] != plain.bos_token_id

    def expected(first: int | None) -> float:
        nats = 0.0
        with torch.no_grad():
            for text in texts:
                ids = ([] if first is None else [first]) + plain(text)["input_ids"]
                log_probs = model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
                nats -= sum(float(log_probs[t - 1, ids[t]]) for t in range(1, len(ids)))
        return nats / math.log(2) / (11 + 19)

    eos = plain.eos_token_id
    assert bits_per_byte(model, plain, texts) == pytest.approx(expected(plain.bos_token_id), rel=1e-5)
    assert bits_per_byte(model, plain, texts, bos_token_id=eos) == pytest.approx(expected(eos), rel=1e-5)
    assert bits_per_byte(model, plain, texts, bos_token_id=None) == pytest.approx(expected(None), rel=1e-5)
    assert expected(eos) != pytest.approx(expected(plain.bos_token_id), rel=1e-5)
