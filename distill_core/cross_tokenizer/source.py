"""The teacher source of a run whose teacher has its own tokenizer.

Each batch carries its raw texts (``batch["texts"]``). :class:`CrossTokenizerTeachers` tokenises
them for the teacher, runs it through the ordinary :class:`~distill_core.teachers.LiveTeachers`
(its adaptor, no gradient), and returns a micro-batch whose
:class:`~distill_core.step.TeacherOutput` holds the teacher's logits over *its own* tokens with the
batch's :class:`~distill_core.cross_tokenizer.TokenAlignment` beside them
(:func:`~distill_core.cross_tokenizer.causal.next_token_alignment`, built with the run's one
:class:`~distill_core.cross_tokenizer.VocabularyPair`). The student's batch is the batch's own
encoding (``input_ids``, ``attention_mask``, ``labels``, ``offset_mapping``) when it has one, else
the texts tokenised with the student's tokenizer; ``texts`` and the offsets are taken out of what
the student is called with.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from distill_core.cross_tokenizer.alignment import encode_for_alignment
from distill_core.cross_tokenizer.causal import next_token_alignment
from distill_core.errors import DistillError
from distill_core.step import MicroBatch, TeacherOutput
from distill_core.adaptors.logits import logits_view
from distill_core.teachers import TeacherSource

if TYPE_CHECKING:
    from distill_core.cross_tokenizer.vocabulary import VocabularyPair
    from distill_core.teachers import LiveTeachers

#: batch keys that describe the texts for the alignment and are not arguments of the student model
ALIGNMENT_KEYS = ("texts", "offset_mapping", "special_tokens_mask")


class CrossTokenizerTeachers(TeacherSource):
    """Tokenises each batch's texts for the teacher, runs it, and aligns its tokens with the student's.

    :param live: the live teacher (one), run on the teacher's encoding.
    :param tokenizer_S: the student's (fast) tokenizer, for batches that carry texts only.
    :param tokenizer_T: the teacher's (fast) tokenizer.
    :param vocabularies: the run's matched vocabularies (built once at setup).
    :param device: where the models run.
    :param max_length: truncate each side's encoding to this many tokens; None: no truncation.
    """

    def __init__(
        self,
        live: LiveTeachers,
        tokenizer_S: Any,
        tokenizer_T: Any,
        vocabularies: VocabularyPair,
        device: torch.device,
        *,
        max_length: int | None = None,
    ) -> None:
        self.live = live
        self.tokenizer_S = tokenizer_S
        self.tokenizer_T = tokenizer_T
        self.vocabularies = vocabularies
        self.device = device
        self.encode_args: dict[str, Any] = {} if max_length is None else {"truncation": True, "max_length": max_length}

    def prepare(self, batch: Any, task: str | None, model_args: Mapping[str, Any], examples: Any = None) -> MicroBatch:
        texts = _texts_of(batch)
        encoding_S, batch_S = self._student_side(batch, texts)
        encoding_T = encode_for_alignment(self.tokenizer_T, texts, **self.encode_args)
        alignment = next_token_alignment(
            texts,
            encoding_S,
            encoding_T,
            labels_S=batch_S.get("labels"),
            vocabularies=self.vocabularies,
        ).to(self.device)
        batch_T = {name: encoding_T[name].to(self.device) for name in ("input_ids", "attention_mask")}
        results, captured = self.live.run(batch_T, task, model_args, self.live.routing.keys_for(task))
        with_logits = self.live.with_logits
        teacher = {
            key: TeacherOutput(r, logits_view(r) if with_logits else None, alignment) for key, r in results.items()
        }
        tokens = alignment.group_mask.sum().to(torch.float32) if with_logits else None  # the kept groups
        return MicroBatch(batch=batch_S, task=task, teacher=teacher, captured=captured, tokens=tokens)

    def _student_side(
        self, batch: Mapping[str, Any], texts: Sequence[str]
    ) -> tuple[Mapping[str, Any], dict[str, Any]]:
        """The student's encoding for the alignment (on the CPU) and the batch its model is called with."""
        if "input_ids" not in batch:
            encoding = encode_for_alignment(self.tokenizer_S, texts, **self.encode_args)
            labels = encoding["input_ids"].masked_fill(encoding["attention_mask"] == 0, -100)
            batch_S = {**{name: encoding[name] for name in ("input_ids", "attention_mask")}, "labels": labels}
            return encoding, {name: value.to(self.device) for name, value in batch_S.items()}
        if "offset_mapping" not in batch:
            raise DistillError(
                "a cross-tokenizer batch with the student's input_ids needs their 'offset_mapping' (the character "
                "span of each token) to align them with the teacher's tokens; tokenise with "
                "distill_core.cross_tokenizer.encode_for_alignment(tokenizer_S, texts), or pass only 'texts'"
            )
        encoding = {name: _on_cpu(value) for name, value in batch.items() if name != "texts"}
        if "attention_mask" not in encoding:
            encoding["attention_mask"] = torch.ones_like(encoding["input_ids"])
        batch_S = {name: value for name, value in batch.items() if name not in ALIGNMENT_KEYS}
        return encoding, batch_S

    def log_scalars(self) -> dict[str, Any]:
        return self.live.log_scalars()

    def close(self) -> None:
        self.live.close()


def _texts_of(batch: Any) -> list[str]:
    texts = batch.get("texts") if isinstance(batch, Mapping) else None
    if not isinstance(texts, (list, tuple)) or not all(isinstance(text, str) for text in texts):
        got = type(batch).__name__ if not isinstance(batch, Mapping) else f"a mapping with keys {sorted(batch)}"
        raise DistillError(
            f"cross-tokenizer distillation needs each batch's raw texts as batch['texts'] (a list of str), to "
            f"tokenise them for the teacher; got {got}. Collate with e.g. collate_fn=lambda texts: {{'texts': texts}}"
        )
    return list(texts)


def _on_cpu(value: Any) -> Any:
    return value.cpu() if isinstance(value, torch.Tensor) else value


__all__ = ["ALIGNMENT_KEYS", "CrossTokenizerTeachers"]
