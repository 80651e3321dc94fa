"""Tiny random-init Hugging Face BERT models and data for fast engine tests."""

from __future__ import annotations

import torch
from transformers import BertConfig, BertForSequenceClassification

VOCAB, LENGTH, CLASSES = 100, 12, 3


def tiny_bert(
    hidden: int = 32, layers: int = 4, heads: int = 4, *, dropout: float = 0.0, seed: int = 0
) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=hidden * 2,
        max_position_embeddings=LENGTH * 2,
        num_labels=CLASSES,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        attn_implementation="eager",
    )
    return BertForSequenceClassification(config)


def tiny_data(n: int = 32, *, seed: int = 1, padded: bool = True) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, VOCAB, (n, LENGTH), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    if padded:
        attention_mask[::2, LENGTH - 4 :] = 0
        input_ids = input_ids * attention_mask
    labels = torch.randint(0, CLASSES, (n,), generator=generator)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def dict_batches(data: dict[str, torch.Tensor], batch_size: int) -> list[dict[str, torch.Tensor]]:
    n = len(data["labels"])
    return [{key: value[i : i + batch_size] for key, value in data.items()} for i in range(0, n, batch_size)]


def bert_adaptor(batch, outputs):
    """The usual adaptor for a Hugging Face classifier called with dict batches."""
    return {
        "logits": outputs.logits,
        "hidden": outputs.hidden_states,
        "attention": outputs.attentions,
        "inputs_mask": batch["attention_mask"],
        "losses": [outputs.loss],
    }
