"""The run's examples: data files to records, records to ``input_ids`` and ``labels``, and batches.

Labels follow the causal-LM convention of transformers: ``labels`` are aligned with ``input_ids``
(the automatic adaptor shifts them), and ``-100`` marks a token that neither the hard-label loss
nor the KD counts. Which tokens count depends on the format:

- ``text``: every token (with ``packing``, the examples are joined with EOS and cut into blocks);
- ``prompt_completion``: the completion's tokens and an EOS after it;
- ``messages``: the assistant turns' tokens as the chat template renders them (the turn's closing
  token included, so the student learns to stop). Their spans are found from the template itself:
  the conversation is rendered up to each assistant turn (with the generation prompt) and through
  it, and the tokens whose characters fall between those two renderings are the turn's. This needs
  no ``{% generation %}`` markers, which most templates lack.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from distill_core.run.config import DataSection

IGNORE = -100


class DataFileError(ValueError):
    """A data file that cannot be read as examples; the message says where."""


#: the files ``Dataset.save_to_disk`` writes beside its ``.arrow`` shards, and ``DatasetDict``'s
DATASET_FILES = ("dataset_info.json", "state.json")
DATASET_DICT_FILE = "dataset_dict.json"


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    try:
        import pyarrow.parquet as parquet
    except ImportError:
        raise DataFileError(f"{path}: reading .parquet needs pyarrow (pip install pyarrow)") from None
    try:
        return parquet.read_table(path).to_pylist()
    except Exception as exc:  # noqa: BLE001 - pyarrow's own errors: the file is not a parquet table
        raise DataFileError(f"{path}: not a readable parquet file ({exc})") from None


def _read_saved_dataset(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``datasets`` folder written by ``Dataset.save_to_disk``; ClassLabel columns as names."""
    if (path / DATASET_DICT_FILE).is_file():
        try:
            splits = json.loads((path / DATASET_DICT_FILE).read_text(encoding="utf-8")).get("splits", [])
        except (OSError, ValueError, AttributeError):
            splits = []
        example = f"{path / splits[0]}" if splits else f"{path}/train"
        raise DataFileError(
            f"{path}: a DatasetDict saved with save_to_disk (splits {splits}); name one split's folder, e.g. {example}"
        )
    if not all((path / name).is_file() for name in DATASET_FILES):
        raise DataFileError(
            f"{path}: is a folder, not a data file nor a dataset saved with save_to_disk (no "
            f"{' and '.join(DATASET_FILES)})"
        )
    try:
        import datasets
    except ImportError:
        raise DataFileError(f"{path}: reading a saved dataset needs datasets (pip install datasets)") from None
    try:
        dataset = datasets.load_from_disk(str(path))
    except Exception as exc:  # noqa: BLE001 - the library's own errors: a damaged folder
        raise DataFileError(f"{path}: the saved dataset cannot be read ({exc})") from None
    records = dataset.to_list()
    for column, feature in dataset.features.items():
        if isinstance(feature, datasets.ClassLabel):  # the class names, as a .jsonl file would hold them
            for record in records:
                if isinstance(record.get(column), int) and record[column] >= 0:
                    record[column] = feature.int2str(record[column])
    return records


def read_records(path: str | Path, *, text_column: str = "text") -> list[dict[str, Any]]:
    """Return the examples of a ``.jsonl``, ``.json`` (a list of objects), ``.csv``, ``.txt`` or ``.parquet`` file.

    A ``.txt`` file gives one example per non-empty line, under ``text_column``; a folder written by
    ``datasets``' ``Dataset.save_to_disk`` gives its rows (a ``ClassLabel`` column as class names).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.exists():
        raise DataFileError(f"{path}: no such file")
    if path.is_dir():
        return _checked(path, _read_saved_dataset(path))
    if suffix == ".parquet":
        return _checked(path, _read_parquet(path))
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataFileError(f"{path}: not UTF-8 text (offset {exc.start})") from None
    if suffix == ".jsonl":
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataFileError(f"{path}: line {number} is not valid JSON ({exc.msg})") from None
    elif suffix == ".json":
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataFileError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(records, list):
            raise DataFileError(f"{path}: a .json data file must hold a list of examples, got {type(records).__name__}")
    elif suffix == ".csv":
        records = list(csv.DictReader(text.splitlines()))
    elif suffix == ".txt":
        records = [{text_column: line} for line in text.splitlines() if line.strip()]
    else:
        raise DataFileError(
            f"{path}: unknown data file type {suffix or '(none)'!r}; use .jsonl, .json, .csv, .txt, .parquet or a "
            f"folder saved by datasets' save_to_disk"
        )
    return _checked(path, records)


def _checked(path: Path, records: list[Any]) -> list[dict[str, Any]]:
    for number, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise DataFileError(f"{path}: example {number} is a {type(record).__name__}, not an object of columns")
    if not records:
        raise DataFileError(f"{path}: holds no examples")
    return records


def columns_of(section: DataSection) -> dict[str, str]:
    """The columns the format reads, by the name of the field that names each."""
    if section.format == "messages":
        return {"messages_column": section.messages_column}
    if section.format == "prompt_completion":
        return {"prompt_column": section.prompt_column, "completion_column": section.completion_column}
    if section.format == "text_label":
        return {"text_column": section.text_column, "label_column": section.label_column}
    return {"text_column": section.text_column}


def split_held_out(
    records: list[dict[str, Any]], fraction: float, *, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split ``records`` into training and held-out examples by a fixed shuffle; ``fraction=0`` holds none out."""
    if fraction <= 0:
        return records, []
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    held = max(1, round(fraction * len(records)))
    if held >= len(records):
        raise DataFileError(f"eval_fraction {fraction} of {len(records)} examples leaves none to train on")
    return [records[i] for i in sorted(order[held:])], [records[i] for i in sorted(order[:held])]


def _encode(tokenizer: Any, text: str, *, special: bool) -> tuple[list[int], list[tuple[int, int]]]:
    encoding = tokenizer(text, add_special_tokens=special, return_offsets_mapping=True)
    return list(encoding["input_ids"]), [tuple(pair) for pair in encoding["offset_mapping"]]


def _labels_in_spans(ids: list[int], offsets: list[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> list[int]:
    """``ids`` where a token's characters reach into a span ``[start, end)``, -100 elsewhere.

    A token counts when it ends after the span starts and starts before it ends, so a token merged
    across the boundary (``=4`` of ``2+2=`` + ``4``) counts: the first characters of a span are learnt.
    """
    labels = [IGNORE] * len(ids)
    for index, (token_start, token_end) in enumerate(offsets):
        if token_end > token_start and any(token_end > start and token_start < end for start, end in spans):
            labels[index] = ids[index]
    return labels


def _as_messages(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str):  # a CSV cell holds the list as JSON
        value = json.loads(value)
    if not isinstance(value, list) or not all(isinstance(m, dict) and "role" in m for m in value):
        raise DataFileError(f"a messages example must be a list of {{role, content}} objects, got {value!r:.80}")
    return value


def _renderings(render: Any, turns: list[dict[str, Any]]) -> list[str]:
    """The turns rendered with the generation prompt, then without (some templates reject an empty list)."""
    found = []
    for prompt in (True, False):
        try:
            found.append(render(turns, prompt))
        except Exception:  # noqa: BLE001 - a template's own error: the next rendering is tried
            continue
    return found


def assistant_spans(tokenizer: Any, messages: list[dict[str, Any]]) -> tuple[str, list[tuple[int, int]]]:
    """Return the rendered conversation and the character span of each assistant turn in it."""

    def render(turns: list[dict[str, Any]], prompt: bool) -> str:
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=prompt)

    full = render(messages, False)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        candidates = _renderings(render, messages[:index]) + ([""] if index == 0 else [])
        before = next((text for text in candidates if full.startswith(text)), None)
        through = render(messages[: index + 1], False)
        if before is None or not full.startswith(through):
            raise DataFileError(
                f"the chat template renders the conversation up to assistant turn {index} differently from the "
                f"whole conversation, so its tokens cannot be found; use format prompt_completion instead"
            )
        spans.append((len(before), len(through)))
    return full, spans


def tokenize_example(tokenizer: Any, record: dict[str, Any], section: DataSection) -> dict[str, list[int]]:
    """Return one example's ``input_ids`` and ``labels`` (cut to ``max_length``)."""
    eos = tokenizer.eos_token_id
    if section.format == "messages":
        text, spans = assistant_spans(tokenizer, _as_messages(record[section.messages_column]))
        ids, offsets = _encode(tokenizer, text, special=False)  # a template writes its own BOS
        labels = _labels_in_spans(ids, offsets, spans)
    elif section.format == "prompt_completion":
        prompt, completion = str(record[section.prompt_column]), str(record[section.completion_column])
        ids, offsets = _encode(tokenizer, prompt + completion, special=True)
        labels = _labels_in_spans(ids, offsets, [(len(prompt), len(prompt) + len(completion))])
        if eos is not None and (not ids or ids[-1] != eos):
            ids, labels = [*ids, eos], [*labels, eos]
    else:
        ids = list(tokenizer(str(record[section.text_column]))["input_ids"])
        labels = list(ids)
    return {"input_ids": ids[: section.max_length], "labels": labels[: section.max_length]}


def pack(examples: Sequence[dict[str, list[int]]], *, block: int, eos: int | None) -> list[dict[str, list[int]]]:
    """Join ``text`` examples (EOS between them) and cut the stream into blocks of ``block`` tokens.

    The last block keeps what is left (at least 2 tokens, one prediction); the collator pads it.
    """
    stream: list[int] = []
    for example in examples:
        stream.extend(example["input_ids"])
        if eos is not None and (not stream or stream[-1] != eos):
            stream.append(eos)
    blocks = [stream[start : start + block] for start in range(0, len(stream), block)]
    return [{"input_ids": ids, "labels": list(ids)} for ids in blocks if len(ids) >= 2]


def build_examples(
    tokenizer: Any, records: Sequence[dict[str, Any]], section: DataSection
) -> list[dict[str, list[int]]]:
    """Tokenise ``records``; pack them when asked; drop examples with no token that counts."""
    if section.format == "text" and section.packing:
        whole = section.model_copy(update={"max_length": 1 << 62})  # cut into blocks, not per example
        examples = [tokenize_example(tokenizer, record, whole) for record in records]
        return pack(examples, block=section.max_length, eos=tokenizer.eos_token_id)
    examples = [tokenize_example(tokenizer, record, section) for record in records]
    return [example for example in examples if sum(label != IGNORE for label in example["labels"][1:]) > 0]


def pad_id_of(tokenizer: Any) -> int:
    """The id that fills padding: the tokenizer's pad token, else its EOS, else 0 (masked out either way)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


class Collator:
    """Right-pad examples into ``input_ids``, ``attention_mask`` and ``labels`` (-100 on padding)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, examples: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        length = max(len(example["input_ids"]) for example in examples)
        input_ids = torch.full((len(examples), length), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
        labels = torch.full((len(examples), length), IGNORE, dtype=torch.long)
        for row, example in enumerate(examples):
            size = len(example["input_ids"])
            input_ids[row, :size] = torch.tensor(example["input_ids"])
            attention_mask[row, :size] = 1
            labels[row, :size] = torch.tensor(example["labels"])
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class EpochShuffle(torch.utils.data.RandomSampler):
    """A shuffle drawn from ``seed + epoch`` alone (distill calls ``set_epoch``), never from the global RNG.

    So a resumed run draws each epoch's order again whatever the RNG did before. Under torchrun,
    distill swaps it for a shuffling ``DistributedSampler`` with the same kind of seeding.
    """

    def __init__(self, data_source: Sequence[Any], *, seed: int) -> None:
        super().__init__(data_source)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(len(self.data_source), generator=generator).tolist())


def make_loader(
    examples: Sequence[dict[str, Any]],
    *,
    batch_size: int,
    pad_id: int,
    shuffle: bool,
    seed: int = 0,
    classify: bool = False,
) -> torch.utils.data.DataLoader:
    """A DataLoader of padded batches (for training, shuffled anew each epoch from ``seed + epoch``).

    :param classify: the examples hold one class id each (``labels`` of shape (B,)), not token labels.
    """
    from distill_core.run.classification import ClassificationCollator

    examples = list(examples)
    sampler = EpochShuffle(examples, seed=seed) if shuffle else None
    collate = ClassificationCollator(pad_id) if classify else Collator(pad_id)
    return torch.utils.data.DataLoader(examples, batch_size=batch_size, sampler=sampler, collate_fn=collate)
