"""Turning a batch's fresh teacher outputs into cache entries, and entries back into a batch's outputs.

Which axes are trimmed, and how token logits become rows, is described in :mod:`.layout` and
docs/teacher-cache.md. Encoding reads the teacher's outputs on the host (the build path); assembling
works on the host and sends each rebuilt tensor to the device in one copy.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from distill_core.adaptors import as_list, select_layers
from distill_core.errors import DistillError
from distill_core.teacher_cache.keys import BatchExamples
from distill_core.teacher_cache.layout import Entry, FieldSpec, Layout, dtype_name, dtype_named, pack_bits, unpack_bits
from distill_core.teacher_cache.topk import TeacherRows, encode_top_k, index_dtype

# per feature: which per-example axes run over the input sequence ("last": the last one or two)
_SEQUENCE_AXES = {
    "hidden": "first",
    "encoder_hidden": "first",
    "inputs_mask": "first",
    "attention": "last2",
    "encoder_attention": "last2",
    "cross_attention": "last1",
    "decoder_hidden": "none",
    "decoder_attention": "none",
}


def _resolve(results: Mapping[str, Any], captured: Mapping[str, Tensor], path: tuple[Any, ...]) -> Tensor:
    head, *rest = path
    if head == "captured":
        return captured[rest[0]]
    value = results[head]
    if head == "logits":
        return as_list(value)[rest[0]]
    for part in rest:
        value = value[part]
    return value


def _trimmed_dims(path: tuple[Any, ...], shape: Sequence[int], padded: int | None, offset: int = 0) -> tuple[Any, ...]:
    """Per-example dims with the sequence axes of ``path``'s feature named "L" (or "L-1")."""
    dims: list[Any] = list(shape)
    if padded is None:
        return tuple(dims)
    head = path[0]
    if head == "masks":
        head = path[1]
    rule = _SEQUENCE_AXES.get(head, "captured" if head == "captured" else "first" if head == "logits_mask" else "none")
    if rule == "captured":
        rule = "last2" if len(shape) == 3 and shape[1] == shape[2] == padded else "first"
    axes = {"first": [0], "last1": [len(shape) - 1], "last2": [len(shape) - 2, len(shape) - 1], "none": []}[rule]
    name = "L" if offset == 0 else "L-1"
    for axis in axes:
        if 0 <= axis < len(shape) and shape[axis] == padded + offset:
            dims[axis] = name
    return tuple(dims)


class Encoder:
    """Turns a batch's fresh teacher outputs into entries, and entries back into a batch's outputs.

    :param selection: what the losses read of this teacher (:class:`~distill_core.teacher_cache.cache.Selection`).
    :param config: the :class:`~distill_core.teacher_cache.config.TeacherCacheConfig`.
    :param temperature: the KD temperature (top-k only).
    :param vocab_size: ``kd_vocab_size``: token rows keep their first N entries.
    :param chunk_rows: rows of token logits encoded at once (None: the token-KD default for the vocabulary).
    """

    def __init__(
        self, selection: Any, config: Any, *, temperature: float, vocab_size: int | None, chunk_rows: int | None
    ) -> None:
        self.selection = selection
        self.config = config
        self.temperature = temperature
        self.vocab_size = vocab_size
        self.chunk_rows = chunk_rows
        self.layout: Layout | None = None

    # -- fresh outputs -> entries ----------------------------------------------------------------
    def _paths(self, results: Mapping[str, Any]) -> tuple[list[tuple], bool, bool]:
        """Where each stored tensor is in the adapted outputs; whether token logits are stored as rows."""
        selection = self.selection
        paths: list[tuple] = []
        token_rows = False
        logits_list = isinstance(results.get("logits"), (list, tuple))
        if selection.logits:
            chunked = results.get("logits_hidden") is not None
            logits = as_list(results.get("logits"))
            if chunked or (len(logits) == 1 and logits[0].dim() == 3):
                if results.get("logits_mask") is None:
                    raise DistillError(
                        "the teacher cache stores token logits (B, L, V) at the positions of 'logits_mask', but the "
                        "teacher's adaptor returned none; return 'logits_mask' (B, L), 1 = a position KD reads (the "
                        "automatic adaptors of causal LMs and encoder-decoders do)"
                    )
                token_rows = True
                paths.append(("logits_mask",))
            else:
                if any(t.dim() > 2 for t in logits):
                    raise DistillError(
                        f"the teacher cache stores one (B, L, V) token logits tensor per teacher, but the teacher's "
                        f"adaptor returned {len(logits)} logits tensors of shapes {[tuple(t.shape) for t in logits]}; "
                        f"set DistillationConfig.teacher_cache=None for this model"
                    )
                paths += [("logits", index) for index in range(len(logits))]
        for feature, layers in selection.features:
            # the message a match would give for a missing feature or layer, before anything is stored
            select_layers(results, feature, list(layers), "the teacher's adaptor", f"the teacher cache ({feature!r})")
            paths += [(feature, layer) for layer in layers]
        if selection.masks:
            if results.get("inputs_mask") is not None:
                paths.append(("inputs_mask",))
            for feature, _ in selection.features:
                if (results.get("masks") or {}).get(feature) is not None:
                    paths.append(("masks", feature))
        paths += [("captured", module) for module in selection.custom]
        return paths, token_rows, logits_list

    def _derive(self, results: Mapping[str, Any], captured: Mapping[str, Tensor], batch: BatchExamples) -> Layout:
        paths, token_rows, logits_list = self._paths(results)
        fields = []
        for path in paths:
            tensor = _resolve(results, captured, path)
            offset = 0
            if path == ("logits_mask",) and batch.padded_length is not None:
                offset = tensor.shape[1] - batch.padded_length
                offset = offset if offset in (0, -1) else 0
            kind = "bits" if path[0] in ("logits_mask", "inputs_mask", "masks") else "tensor"
            dims = _trimmed_dims(path, tuple(tensor.shape[1:]), batch.padded_length, offset)
            fields.append(FieldSpec(path, kind, dtype_name(tensor.dtype), dims))
        vocab = None
        if token_rows:
            vocab, dtype = self._rows_vocab(results)
            k = self.config.top_k
            if k is None:
                fields.append(FieldSpec(("rows", "logits"), "rows", dtype_name(dtype), ("N", vocab)))
            else:
                if k > vocab:
                    raise DistillError(
                        f"teacher_cache.top_k={k} exceeds the teacher's vocabulary of {vocab} entries; use top_k <= "
                        f"{vocab} (top_k={vocab} keeps them all)"
                    )
                fields.append(FieldSpec(("rows", "values"), "rows", self.config.value_dtype, ("N", k)))
                fields.append(FieldSpec(("rows", "indices"), "rows", dtype_name(index_dtype(vocab)), ("N", k)))
                fields.append(FieldSpec(("rows", "mass"), "rows", self.config.value_dtype, ("N",)))
        layers = tuple((feature, len(results[feature])) for feature, _ in self.selection.features)
        return Layout(tuple(fields), layers, logits_list, vocab)

    def _rows_vocab(self, results: Mapping[str, Any]) -> tuple[int, torch.dtype]:
        if results.get("logits_hidden") is not None:
            weight = results["logits_head"].weight
            vocab, dtype = int(weight.shape[0]), weight.dtype
        else:
            logits = as_list(results["logits"])[0]
            vocab, dtype = int(logits.shape[-1]), logits.dtype
        return (min(vocab, self.vocab_size) if self.vocab_size else vocab), dtype

    def encode(
        self, results: Mapping[str, Any], captured: Mapping[str, Tensor], batch: BatchExamples, rows: Sequence[int]
    ) -> dict[int, Entry]:
        """Entries of the examples at batch positions ``rows`` (reads the outputs on the host: a build-path sync)."""
        if self.layout is None:
            self.layout = self._derive(results, captured, batch)
        entries = {row: Entry([], batch.lengths[row], 0, batch.digests[row]) for row in rows}
        token_rows = None
        for field in self.layout.fields:
            if field.kind == "rows":
                if token_rows is None:
                    token_rows = self._token_rows(results, batch, rows, entries)
                for row in rows:
                    entries[row].arrays.append(token_rows[row][field.path[1]])
                continue
            host = _resolve(results, captured, field.path).detach().to("cpu")
            expected = field.shape(0, 0, padded=batch.padded_length or 0)
            if tuple(host.shape[1:]) != expected:
                raise DistillError(
                    f"the teacher's {field.label()} has per-example shape {tuple(host.shape[1:])} in this batch, but "
                    f"the cache's layout expects {expected} (dims {list(field.dims)}, 'L' = the padded input length "
                    f"{batch.padded_length}): the cache trims only the input sequence, so anything else must keep its "
                    f"shape from batch to batch (pad decoder sequences to a fixed length), or turn the cache off"
                )
            if field.kind == "bits" and not bool(((host == 0) | (host == 1)).all()):
                raise DistillError(f"the teacher's {field.label()} holds values other than 0 and 1; masks must be 0/1")
            for row in rows:
                example = host[row][tuple(slice(0, size) for size in field.shape(batch.lengths[row], 0))]
                entries[row].arrays.append(pack_bits(example) if field.kind == "bits" else example.clone())
        return entries

    def _token_rows(
        self, results: Mapping[str, Any], batch: BatchExamples, rows: Sequence[int], entries: dict[int, Entry]
    ) -> dict[int, dict[str, Tensor]]:
        """The valid rows of each example's token logits, dense or top-k, on the host."""
        keep = results["logits_mask"] != 0
        host_keep = keep.cpu()
        counts = host_keep.sum(1).tolist()
        mask_field = next(f for f in self.layout.fields if f.path == ("logits_mask",))
        for row in rows:
            valid = mask_field.shape(batch.lengths[row], 0)[0]
            if bool(host_keep[row, valid:].any()):
                raise DistillError(
                    f"'logits_mask' of example {row} of the batch marks positions past its length {batch.lengths[row]} "
                    f"(from attention_mask); the teacher cache stores each example up to its length"
                )
            entries[row].rows = int(counts[row])
        parts: list[dict[str, Tensor]] = []
        # logits as the model's head computes them (its dtype), whatever autocast region this runs in
        with torch.no_grad(), torch.autocast(device_type=keep.device.type, enabled=False):
            for chunk in self._logits_chunks(results, keep):
                if self.config.top_k is None:
                    parts.append({"logits": chunk.to("cpu")})
                else:
                    values, indices, mass = encode_top_k(
                        chunk, self.config.top_k, self.temperature, self.config.value_dtype
                    )
                    parts.append({"values": values.cpu(), "indices": indices.cpu(), "mass": mass.cpu()})
        names = [f.path[1] for f in self.layout.fields if f.kind == "rows"]
        joined = {name: torch.cat([part[name] for part in parts]) if parts else None for name in names}
        by_example: dict[int, dict[str, Tensor]] = {}
        start = 0
        for row, count in enumerate(counts):
            if row in entries:
                by_example[row] = {
                    name: (t[start : start + count].clone() if t is not None else self._empty(name))
                    for name, t in joined.items()
                }
            start += count
        return by_example

    def _empty(self, name: str) -> Tensor:
        field = next(f for f in self.layout.fields if f.path == ("rows", name))
        dtype, shape = field.stored(0, 0)
        return torch.empty(shape, dtype=dtype)

    def _logits_chunks(self, results: Mapping[str, Any], keep: Tensor) -> Iterator[Tensor]:
        """The teacher's token logits at the ``keep`` positions, a chunk of rows at a time (first V entries)."""
        from distill_core.terms.token_kd import default_chunk_size

        vocab = self.layout.vocab
        chunk = self.chunk_rows or default_chunk_size(vocab)
        if results.get("logits_hidden") is not None:
            head = results["logits_head"]
            weight, bias = head.weight[:vocab], getattr(head, "bias", None)
            bias = None if bias is None else bias[:vocab]
            hidden = results["logits_hidden"].to(keep.device)[keep]
            for start in range(0, hidden.shape[0], chunk):
                yield torch.nn.functional.linear(hidden[start : start + chunk].to(weight.dtype), weight, bias)
        else:
            logits = as_list(results["logits"])[0].to(keep.device)[keep][:, :vocab]
            for start in range(0, logits.shape[0], chunk):
                yield logits[start : start + chunk]

    # -- entries -> a batch's outputs ------------------------------------------------------------
    def assemble(
        self, entries: Sequence[Entry], batch: BatchExamples, device: torch.device
    ) -> tuple[dict[str, Any], dict[str, Tensor], TeacherRows | None]:
        """The batch's adapted teacher outputs, custom-match features and token-logit rows from its entries.

        The rows (None unless token logits are stored) are the teacher's KD logits as a
        :class:`~distill_core.adaptors.logits.LogitsView`.
        """
        layout = self.layout
        results: dict[str, Any] = {feature: [None] * count for feature, count in layout.layers}
        captured: dict[str, Tensor] = {}
        logits: dict[int, Tensor] = {}
        rows: dict[str, list[Tensor]] = {}
        pin = device.type == "cuda"
        host_mask = None
        token_rows = None
        for index, field in enumerate(layout.fields):
            arrays = [entry.arrays[index] for entry in entries]
            if field.kind == "rows":
                rows[field.path[1]] = arrays
                continue
            padded = batch.padded_length if batch.padded_length is not None else 0
            shape = (len(entries), *field.shape(0, 0, padded=padded))
            dtype = dtype_named(field.dtype)
            out = torch.zeros(shape, dtype=dtype, pin_memory=pin)
            for row, (entry, array) in enumerate(zip(entries, arrays)):
                example = field.shape(entry.length, entry.rows)
                if field.kind == "bits":
                    array = unpack_bits(array, example, dtype)
                out[row][tuple(slice(0, size) for size in example)] = array
            tensor = out.to(device, non_blocking=pin)
            if field.path == ("logits_mask",):
                host_mask = out
            head, *rest = field.path
            if head == "captured":
                captured[rest[0]] = tensor
            elif head == "logits":
                logits[rest[0]] = tensor
            elif head == "masks":
                results.setdefault("masks", {})[rest[0]] = tensor
            elif rest:
                results[head][rest[0]] = tensor
            else:
                results[head] = tensor
        if logits:
            ordered = [logits[index] for index in sorted(logits)]
            results["logits"] = ordered if layout.logits_list else ordered[0]
        if rows:
            joined = {name: torch.cat(parts) for name, parts in rows.items()}
            # where the rows go in (B·L): known on the host, so placing them reads nothing from the device
            joined["positions"] = (host_mask != 0).reshape(-1).nonzero().squeeze(1)
            if pin:
                joined = {name: t.pin_memory() for name, t in joined.items()}
            joined = {name: t.to(device, non_blocking=pin) for name, t in joined.items()}
            token_rows = TeacherRows(
                results["logits_mask"] != 0,
                positions=joined["positions"],
                vocab=layout.vocab,
                rows=joined.get("logits"),
                top_k=(joined["values"], joined["indices"], joined["mass"]) if "values" in joined else None,
                temperature=self.temperature,
                missing_mass=self.config.missing_mass,
            )
        return results, captured, token_rows
