"""Tiny random-init generative Hugging Face models (2 layers, width 32, vocabulary 100) and batches.

Dropout is off, so a model in train mode computes what it computes in eval mode (tests compare the
loop's values with hand computations).
"""

from __future__ import annotations

import torch
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

VOCAB, WIDTH, LAYERS, HEADS = 100, 32, 2, 2
PAD = 0


def tiny_gpt2(*, width: int = WIDTH, vocab: int = VOCAB, seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=vocab,
        n_embd=width,
        n_layer=LAYERS,
        n_head=HEADS,
        n_positions=64,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=PAD,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        attn_implementation="eager",
    )
    return GPT2LMHeadModel(config).eval()


def tiny_llama(*, width: int = WIDTH, vocab: int = VOCAB, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=width,
        intermediate_size=width * 2,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=PAD,
        attn_implementation="eager",
    )
    return LlamaForCausalLM(config).eval()


def tiny_t5(*, width: int = WIDTH, vocab: int = VOCAB, seed: int = 0) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=vocab,
        d_model=width,
        d_kv=width // HEADS,
        d_ff=width * 2,
        num_layers=LAYERS,
        num_heads=HEADS,
        decoder_start_token_id=PAD,
        pad_token_id=PAD,
        eos_token_id=1,
        dropout_rate=0.0,
        attn_implementation="eager",
    )
    return T5ForConditionalGeneration(config).eval()


def tiny_bart(*, width: int = WIDTH, vocab: int = VOCAB, seed: int = 0) -> BartForConditionalGeneration:
    torch.manual_seed(seed)
    config = BartConfig(
        vocab_size=vocab,
        d_model=width,
        encoder_layers=LAYERS,
        decoder_layers=LAYERS,
        encoder_attention_heads=HEADS,
        decoder_attention_heads=HEADS,
        encoder_ffn_dim=width * 2,
        decoder_ffn_dim=width * 2,
        max_position_embeddings=64,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
        forced_eos_token_id=None,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        attn_implementation="eager",
    )
    return BartForConditionalGeneration(config).eval()


def causal_batch(*, batch: int = 3, length: int = 8, seed: int = 1) -> dict[str, torch.Tensor]:
    """Right-padded token ids: row 0 has 5 real tokens, row 2 has 7; the prompt (first 2 tokens) of
    row 1 is excluded from the labels with -100, as a fine-tuning collator does."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, VOCAB, (batch, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, 5:] = 0
    attention_mask[2, 7:] = 0
    input_ids = input_ids.masked_fill(attention_mask == 0, PAD)
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[1, :2] = -100
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def seq2seq_batch(*, batch: int = 3, source: int = 8, target: int = 5, seed: int = 2) -> dict[str, torch.Tensor]:
    """Source (B, 8) with padding in row 0; labels (B, 5) with -100 padding in rows 0 and 2."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, VOCAB, (batch, source), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, 6:] = 0
    labels = torch.randint(3, VOCAB, (batch, target), generator=generator)
    labels[0, 3:] = -100
    labels[2, 4:] = -100
    return {
        "input_ids": input_ids.masked_fill(attention_mask == 0, PAD),
        "attention_mask": attention_mask,
        "labels": labels,
    }
