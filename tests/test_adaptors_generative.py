"""Automatic adaptors for causal LMs and encoder-decoders: shift, masks, chunked mode, features."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification, GPT2LMHeadModel

from distill_core import AdaptorError, get_loss
from distill_core.adaptors import (
    AutoAdaptor,
    BoundAdaptor,
    CausalLMAdaptor,
    EncoderDecoderAdaptor,
    auto_adaptor,
    auto_adaptor_for,
    causal_lm_targets,
    check_adaptor_output,
    check_pair,
    feature_mask,
    model_kind,
    select_layers,
)
from tests.tiny_lm import VOCAB, causal_batch, seq2seq_batch, tiny_bart, tiny_gpt2, tiny_llama, tiny_t5

CAUSAL = {"gpt2": tiny_gpt2, "llama": tiny_llama}
SEQ2SEQ = {"t5": tiny_t5, "bart": tiny_bart}
# causal_batch(): row 0 has 5 real tokens, row 1's first 2 labels are -100, row 2 has 7 real tokens.
KEEP_WITH_LABELS = torch.tensor([[1, 1, 1, 1, 0, 0, 0], [0, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 0]]).bool()
KEEP_FROM_PADDING = torch.tensor([[1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 0]]).bool()


def tiny_bert(cls):
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=3
    )
    return cls(config).eval()


@torch.no_grad()
def run(model, adaptor, batch, **kwargs):
    outputs = model(**adaptor.model_batch(batch), **{**kwargs, **adaptor.model_kwargs})
    return outputs, adaptor(batch, outputs)


# -- detection ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("build", "kind", "adaptor_class"),
    [
        (tiny_gpt2, "causal_lm", CausalLMAdaptor),
        (tiny_llama, "causal_lm", CausalLMAdaptor),
        (tiny_t5, "encoder_decoder", EncoderDecoderAdaptor),
        (tiny_bart, "encoder_decoder", EncoderDecoderAdaptor),
        (lambda: tiny_bert(BertForSequenceClassification), "other", AutoAdaptor),
        (lambda: tiny_bert(BertForMaskedLM), "other", AutoAdaptor),  # has an output head, but is no causal LM
        (lambda: nn.Linear(4, 2), "other", AutoAdaptor),
    ],
)
def test_kind_is_detected_from_the_model(build, kind, adaptor_class) -> None:
    model = build()
    assert model_kind(model) == kind
    assert model_kind(nn.DataParallel(model)) == kind  # wrappers are looked through
    assert type(auto_adaptor_for(model)) is adaptor_class


def test_other_models_get_the_classic_automatic_adaptor() -> None:
    model = tiny_bert(BertForSequenceClassification)
    batch = {
        "input_ids": torch.randint(1, VOCAB, (2, 6)),
        "attention_mask": torch.ones(2, 6, dtype=torch.long),
        "labels": torch.tensor([0, 2]),
    }
    adaptor = auto_adaptor_for(model)
    outputs, results = run(model, adaptor, batch, output_hidden_states=True)
    expected = auto_adaptor(batch, outputs)
    assert results.keys() == expected.keys() and adaptor.model_kwargs == {}
    assert torch.equal(results["logits"], expected["logits"])


def test_kind_can_be_forced_and_is_validated() -> None:
    assert type(auto_adaptor_for(tiny_bert(BertForMaskedLM), kind="causal_lm")) is CausalLMAdaptor
    with pytest.raises(ValueError, match=r"`kind` to be one of causal_lm, encoder_decoder, other but got 'lm'"):
        auto_adaptor_for(tiny_gpt2(), kind="lm")


# -- causal LMs: shift and masks ------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(CAUSAL))
def test_causal_lm_logits_are_shifted_and_masked_by_labels_and_padding(name) -> None:
    model, batch = CAUSAL[name](), causal_batch()
    outputs, results = run(model, auto_adaptor_for(model), batch)
    assert torch.equal(results["logits"], outputs.logits[:, :-1])
    assert torch.equal(results["logits_mask"], KEEP_WITH_LABELS)
    assert torch.equal(results["labels"], batch["labels"][:, 1:])  # -100 kept
    assert torch.equal(results["inputs_mask"], batch["attention_mask"])
    assert results["losses"] == [outputs.loss]
    check_adaptor_output(results, "adaptor_S")


def test_causal_lm_without_labels_masks_padding_and_takes_targets_from_input_ids() -> None:
    model, batch = tiny_gpt2(), causal_batch()
    del batch["labels"]
    _, results = run(model, auto_adaptor_for(model), batch)
    assert torch.equal(results["logits_mask"], KEEP_FROM_PADDING)
    assert torch.equal(results["labels"], batch["input_ids"][:, 1:].masked_fill(~KEEP_FROM_PADDING, -100))
    assert "losses" not in results


def test_causal_lm_without_labels_or_attention_mask_keeps_every_shifted_position() -> None:
    model = tiny_gpt2()
    batch = {"input_ids": causal_batch()["input_ids"]}
    _, results = run(model, auto_adaptor_for(model), batch)
    assert torch.equal(results["logits_mask"], torch.ones(3, 7, dtype=torch.bool))
    assert torch.equal(results["labels"], batch["input_ids"][:, 1:])
    assert "inputs_mask" not in results


def test_labels_without_attention_mask_mask_only_the_ignored_targets() -> None:
    batch = causal_batch()
    del batch["attention_mask"]
    keep, labels = causal_lm_targets(batch, 3, 8, torch.device("cpu"))
    assert torch.equal(keep, batch["labels"][:, 1:] != -100)
    assert torch.equal(labels, batch["labels"][:, 1:])


def test_left_padding_drops_predictions_made_at_padding() -> None:
    """[pad, pad, a, b, c]: the position-1 logits (a pad) would predict 'a'; they are not a real prediction."""
    batch = {
        "input_ids": torch.tensor([[0, 0, 5, 6, 7]]),
        "attention_mask": torch.tensor([[0, 0, 1, 1, 1]]),
        "labels": torch.tensor([[-100, -100, 5, 6, 7]]),
    }
    keep, _ = causal_lm_targets(batch, 1, 5, torch.device("cpu"))
    assert keep.tolist() == [[False, False, True, True]]


def test_labels_that_do_not_fit_the_logits_are_an_error() -> None:
    batch = causal_batch()
    batch["labels"] = batch["labels"][:, 1:]  # shifted already by the user
    with pytest.raises(AdaptorError, match=r"'labels' has shape \(3, 7\), but the model's logits cover \(3, 8\)"):
        causal_lm_targets(batch, 3, 8, torch.device("cpu"))


def test_kd_on_the_adaptor_output_averages_over_the_valid_tokens_only() -> None:
    teacher, student = tiny_gpt2(width=48, seed=0), tiny_llama(seed=1)
    batch = causal_batch()
    _, results_T = run(teacher, auto_adaptor_for(teacher), batch)
    _, results_S = run(student, auto_adaptor_for(student), batch)
    check_pair(results_S, results_T, "adaptor_T", needs_logits=True)
    kl, temperature = get_loss("kl"), 2.0
    masked = kl(results_S["logits"], results_T["logits"], results_S["logits_mask"], temperature=temperature)

    keep = KEEP_WITH_LABELS
    rows_S, rows_T = results_S["logits"][keep] / temperature, results_T["logits"][keep] / temperature
    p_T = rows_T.softmax(-1)
    by_hand = temperature**2 * (p_T * (p_T.log() - rows_S.log_softmax(-1))).sum(-1).mean()
    torch.testing.assert_close(masked, by_hand, rtol=1e-5, atol=1e-6)
    unmasked = kl(results_S["logits"], results_T["logits"], None, temperature=temperature)
    assert abs(float(unmasked) - float(masked)) > 1e-4


# -- causal LMs: chunked mode ---------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(CAUSAL))
def test_final_hidden_states_through_the_head_are_the_logits(name) -> None:
    """hidden_states[-1] is taken after the final norm (GPT-2 ln_f, Llama norm): head(h) == logits."""
    model, batch = CAUSAL[name](), causal_batch()
    with torch.no_grad():
        full = model(**batch, output_hidden_states=True)
    _, dense = run(model, auto_adaptor_for(model), batch)
    chunked = auto_adaptor_for(model, chunked=True)
    outputs, results = run(model, chunked, batch)

    assert outputs.logits.shape == (3, 1, VOCAB)  # the model built logits for the last position only
    assert "logits" not in results and "losses" not in results
    head = results["logits_head"]
    assert head is model.get_output_embeddings()
    assert results["logits_hidden"].shape == (3, 7, 32)
    logits = results["logits_hidden"] @ head.weight.T + (head.bias if head.bias is not None else 0)
    torch.testing.assert_close(logits, full.logits[:, :-1], rtol=0, atol=1e-5)
    torch.testing.assert_close(head(full.hidden_states[-1]), full.logits, rtol=0, atol=1e-5)
    assert torch.equal(results["logits_mask"], dense["logits_mask"])
    assert torch.equal(results["labels"], dense["labels"])
    check_adaptor_output(results, "adaptor_S")
    check_pair(results, dense, "adaptor_T", needs_logits=True)


def test_chunked_mode_tells_the_caller_how_to_call_the_model() -> None:
    adaptor, batch = auto_adaptor_for(tiny_gpt2(), chunked=True), causal_batch()
    assert adaptor.model_kwargs == {"output_hidden_states": True, "logits_to_keep": 1, "use_cache": False}
    model_batch = adaptor.model_batch(batch)
    assert "labels" not in model_batch and "labels" in batch  # HF would build full logits for its own loss
    assert model_batch.keys() == {"input_ids", "attention_mask"}
    dense = auto_adaptor_for(tiny_gpt2())
    assert dense.model_kwargs == {} and dense.model_batch(batch) is batch


def test_chunked_mode_refuses_a_call_that_built_full_logits_or_no_hidden_states() -> None:
    model, batch = tiny_gpt2(), causal_batch()
    adaptor = auto_adaptor_for(model, chunked=True)
    with torch.no_grad():
        outputs = model(**adaptor.model_batch(batch), output_hidden_states=True)
    with pytest.raises(AdaptorError, match=r"built logits of shape \(3, 8, 100\) for every position.*model_kwargs"):
        adaptor(batch, outputs)
    with torch.no_grad():
        outputs = model(**adaptor.model_batch(batch), logits_to_keep=1)
    with pytest.raises(AdaptorError, match=r"needs hidden_states from GPT2LMHeadModel; call the model with"):
        adaptor(batch, outputs)


class ScaledLogitsGPT2(GPT2LMHeadModel):
    """A head that does more than get_output_embeddings() (as T5's scale or Gemma's soft-capping)."""

    def forward(self, *args, **kwargs):
        outputs = super().forward(*args, **kwargs)
        outputs.logits = outputs.logits * 2
        return outputs


def test_chunked_mode_checks_that_the_head_gives_the_models_logits() -> None:
    reference = tiny_gpt2()
    model = ScaledLogitsGPT2(reference.config).eval()
    adaptor = auto_adaptor_for(model, chunked=True)
    with pytest.raises(AdaptorError, match=r"logits are not logits_head\(hidden_states\[-1\]\).*use chunked=False"):
        run(model, adaptor, causal_batch())


@pytest.mark.parametrize(
    ("build", "pattern"),
    [
        (tiny_t5, "T5ForConditionalGeneration is an encoder-decoder"),
        (lambda: tiny_bert(BertForSequenceClassification), "BertForSequenceClassification is not a causal LM"),
    ],
)
def test_chunked_mode_is_for_causal_lms_only(build, pattern) -> None:
    with pytest.raises(AdaptorError, match=f"chunked=True is for causal LMs.*{pattern}.*Use chunked=False"):
        auto_adaptor_for(build(), chunked=True)


# -- encoder-decoders -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(SEQ2SEQ))
def test_encoder_decoder_features_and_their_masks(name) -> None:
    model, batch = SEQ2SEQ[name](), seq2seq_batch()
    adaptor = auto_adaptor_for(model)
    outputs, results = run(model, adaptor, batch, output_hidden_states=True, output_attentions=True)
    decoder_keep = batch["labels"] != -100
    assert torch.equal(results["logits"], outputs.logits) and results["logits"].shape == (3, 5, VOCAB)  # no shift
    assert torch.equal(results["logits_mask"], decoder_keep)
    assert torch.equal(results["labels"], batch["labels"]) and results["losses"] == [outputs.loss]
    assert [len(results[key]) for key in ("encoder_hidden", "decoder_hidden")] == [3, 3]  # embeddings + 2 layers
    assert results["encoder_hidden"][1].shape == (3, 8, 32) and results["decoder_hidden"][1].shape == (3, 5, 32)
    assert results["encoder_attention"][0].shape == (3, 2, 8, 8)
    assert results["decoder_attention"][0].shape == (3, 2, 5, 5)
    assert results["cross_attention"][0].shape == (3, 2, 5, 8)
    masks = results["masks"]
    assert masks["encoder_hidden"] is batch["attention_mask"] and masks["encoder_attention"] is batch["attention_mask"]
    assert torch.equal(masks["decoder_hidden"], decoder_keep) and torch.equal(masks["decoder_attention"], decoder_keep)
    expected_cross = decoder_keep[:, :, None] & batch["attention_mask"].bool()[:, None, :]
    assert masks["cross_attention"].shape == (3, 5, 8) and torch.equal(masks["cross_attention"], expected_cross)
    assert torch.equal(feature_mask(results, "decoder_hidden"), decoder_keep)
    assert feature_mask(results, "encoder_hidden") is batch["attention_mask"]
    check_adaptor_output(results, "adaptor_T")


def test_decoder_attention_mask_masks_decoder_features_and_narrows_the_logits_mask() -> None:
    model, batch = tiny_bart(), seq2seq_batch()
    batch["decoder_attention_mask"] = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    _, results = run(model, auto_adaptor_for(model), batch, output_hidden_states=True)
    real = batch["decoder_attention_mask"].bool()
    assert torch.equal(results["masks"]["decoder_hidden"], real)
    assert torch.equal(results["logits_mask"], real & (batch["labels"] != -100))


def test_encoder_decoder_without_labels_or_masks_keeps_every_position() -> None:
    model = tiny_t5()
    batch = {"input_ids": seq2seq_batch()["input_ids"], "decoder_input_ids": torch.randint(3, VOCAB, (3, 4))}
    _, results = run(model, auto_adaptor_for(model), batch, output_hidden_states=True)
    assert torch.equal(results["logits_mask"], torch.ones(3, 4, dtype=torch.bool))
    assert torch.equal(results["masks"]["decoder_hidden"], torch.ones(3, 4, dtype=torch.bool))
    assert "encoder_hidden" not in results["masks"] and "inputs_mask" not in results and "labels" not in results


def test_a_decoder_match_is_masked_with_the_decoder_mask() -> None:
    """The former failure: one inputs_mask (3, 8) against decoder features (3, 5, D)."""
    batch = seq2seq_batch()
    teacher, student = tiny_t5(seed=0), tiny_t5(seed=1)
    _, results_T = run(teacher, auto_adaptor_for(teacher), batch, output_hidden_states=True)
    _, results_S = run(student, auto_adaptor_for(student), batch, output_hidden_states=True)
    feature_S = select_layers(results_S, "decoder_hidden", 2, "adaptor_S", "match")
    feature_T = select_layers(results_T, "decoder_hidden", 2, "adaptor_T", "match")
    mask = feature_mask(results_S, "decoder_hidden")
    loss = get_loss("hidden_mse")(feature_S, feature_T, mask)
    keep = mask.float().unsqueeze(-1)
    torch.testing.assert_close(loss, ((feature_S - feature_T) ** 2 * keep).sum() / (keep.sum() * 32))


def test_an_encoder_decoder_asked_for_hidden_names_its_features() -> None:
    model = tiny_t5()
    _, results = run(model, auto_adaptor_for(model), seq2seq_batch(), output_hidden_states=True)
    with pytest.raises(AdaptorError) as info:
        select_layers(results, "hidden", 1, "adaptor_S", "intermediate_matches.0")
    message = str(info.value)
    assert "needs 'hidden' from adaptor_S" in message and "features: encoder_hidden, decoder_hidden" in message
    assert "set the match's feature to 'encoder_hidden' or 'decoder_hidden'" in message
    assert "output_hidden_states=True" not in message  # it was passed


def test_attentions_not_requested_or_not_available_are_explained() -> None:
    model = tiny_t5()
    _, results = run(model, auto_adaptor_for(model), seq2seq_batch(), output_hidden_states=True)
    with pytest.raises(
        AdaptorError, match=r"needs 'cross_attention'.*outputs\.cross_attentions.*output_attentions=True"
    ):
        select_layers(results, "cross_attention", 0, "adaptor_S", "match")
    with pytest.raises(AdaptorError, match=r"'attention'\] is empty \(0 layers\).*attn_implementation='eager'"):
        select_layers({"attention": ()}, "attention", 0, "adaptor_S", "match")
    with pytest.raises(AdaptorError, match=r"needs 'decoder_hidden'.*has no 'decoder_hidden'; use 'hidden'"):
        select_layers({"hidden": (torch.zeros(1, 2, 3),)}, "decoder_hidden", 0, "adaptor_S", "match")


# -- feature_mask ---------------------------------------------------------------------------------
def test_feature_mask_falls_back_to_inputs_mask() -> None:
    inputs_mask, decoder = torch.ones(2, 4), torch.ones(2, 3)
    assert feature_mask({"inputs_mask": inputs_mask}, "hidden") is inputs_mask
    assert feature_mask({"inputs_mask": inputs_mask, "masks": {"decoder_hidden": decoder}}, "hidden") is inputs_mask
    assert feature_mask({"inputs_mask": inputs_mask, "masks": {"decoder_hidden": decoder}}, "decoder_hidden") is decoder
    assert feature_mask({}, "hidden") is None


def test_bound_adaptor_chooses_by_model_and_passes_on_how_to_call_it() -> None:
    model, batch = tiny_gpt2(), causal_batch()
    bound = BoundAdaptor(None, "adaptor_S", model=model, chunked=True)
    assert isinstance(bound.function, CausalLMAdaptor) and bound.function.chunked
    assert bound.model_kwargs == {"output_hidden_states": True, "logits_to_keep": 1, "use_cache": False}
    assert "labels" not in bound.model_batch(batch)
    with torch.no_grad():
        results = bound(batch, model(**bound.model_batch(batch), **bound.model_kwargs), None)
    assert results["logits_hidden"].shape == (3, 7, 32)

    def users(batch, model_outputs):
        return {"logits": model_outputs.logits}

    for plain in (BoundAdaptor(users, "adaptor_S", model=model), BoundAdaptor(None, "adaptor_S")):
        assert plain.model_kwargs == {} and plain.model_batch(batch) is batch
    assert BoundAdaptor(users, "adaptor_S", model=model).function is users
    assert BoundAdaptor(None, "adaptor_S").function is auto_adaptor


# -- with today's distiller -----------------------------------------------------------------------
def test_causal_lm_adaptors_train_with_the_distiller(tmp_path) -> None:
    """Dense mode needs nothing from the caller (empty model_kwargs), so it runs in today's loop."""
    from distill_core import Distillation, DistillationConfig, TrainingConfig

    teacher, student = tiny_gpt2(width=48, seed=0), tiny_llama(seed=1).train()
    batches = [causal_batch(seed=seed) for seed in (1, 2)]
    distiller = Distillation(
        TrainingConfig(output_dir=str(tmp_path), device="cpu", progress_bar=False),
        DistillationConfig(
            kd_loss_type="kl",
            temperature=2,
            hard_label_weight=1.0,
            intermediate_matches=[
                {"layer_T": 2, "layer_S": 2, "feature": "hidden", "loss": "hidden_mse", "proj": ["linear", 32, 48]}
            ],
        ),
        teacher,
        student,
        auto_adaptor_for(teacher),
        auto_adaptor_for(student),
    )
    before = [p.detach().clone() for p in student.parameters()]
    with distiller:
        distiller.train(
            torch.optim.SGD(student.parameters(), lr=0.1), None, batches, num_epochs=1, output_hidden_states=True
        )
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))
