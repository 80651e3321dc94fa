"""The run file (distill train RUN.yaml): labels built per format, checks before weights, and a whole run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from distill_core.run import RunFileError, prepare_run, train_from_file
from distill_core.run.config import DataSection
from distill_core.run.data import Collator, build_examples, read_records
from tiny_lm import tiny_llama

REPO = Path(__file__).resolve().parents[1]
X = -100
SPECIAL = ["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
WORDS = "hello how are you fine thanks what is two plus equals four the cat sat on mat a dog ran".split()
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def make_tokenizer(folder: Path, *, chat: bool = True) -> Path:
    """A word-level tokenizer (ids: SPECIAL then WORDS, 0..26) saved with save_pretrained."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {word: index for index, word in enumerate(SPECIAL + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        additional_special_tokens=SPECIAL[3:],
    )
    if chat:
        tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(folder)
    return folder


def ids(text: str) -> list[int]:
    order = SPECIAL + WORDS
    return [order.index(word) for word in text.split()]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(make_tokenizer(tmp_path_factory.mktemp("tok")))


# -- labels per format ------------------------------------------------------------------------------
def test_messages_count_only_the_assistant_turns_and_their_closing_token(tokenizer) -> None:
    chat = [
        {"role": "system", "content": "the cat"},
        {"role": "user", "content": "hello how are you"},
        {"role": "assistant", "content": "fine thanks"},
        {"role": "user", "content": "what is two plus two"},
        {"role": "assistant", "content": "four"},
    ]
    (example,) = build_examples(tokenizer, [{"messages": chat}], DataSection(train_file="x", format="messages"))
    assert example["input_ids"] == ids(
        "<|system|> the cat <|end|> <|user|> hello how are you <|end|> <|assistant|> fine thanks <|end|> "
        "<|user|> what is two plus two <|end|> <|assistant|> four <|end|>"
    )
    assert example["labels"] == [X] * 11 + ids("fine thanks <|end|>") + [X] * 8 + ids("four <|end|>")


def test_prompt_completion_counts_the_completion_and_an_eos(tokenizer) -> None:
    section = DataSection(train_file="x", format="prompt_completion")
    (example,) = build_examples(tokenizer, [{"prompt": "what is two plus two ", "completion": "four"}], section)
    assert example["input_ids"] == ids("what is two plus two four </s>")
    assert example["labels"] == [X] * 5 + ids("four </s>")


def test_text_counts_every_token_and_is_cut_at_max_length(tokenizer) -> None:
    section = DataSection(train_file="x", format="text", max_length=4)
    examples = build_examples(tokenizer, [{"text": "the cat sat on the mat"}, {"text": "a dog ran"}], section)
    assert examples == [
        {"input_ids": ids("the cat sat on"), "labels": ids("the cat sat on")},
        {"input_ids": ids("a dog ran"), "labels": ids("a dog ran")},
    ]


def test_packed_text_joins_examples_with_eos_into_blocks(tokenizer) -> None:
    section = DataSection(train_file="x", format="text", max_length=4, packing=True)
    examples = build_examples(tokenizer, [{"text": "the cat sat on the mat"}, {"text": "a dog ran"}], section)
    stream = ids("the cat sat on the mat </s> a dog ran </s>")
    assert [e["input_ids"] for e in examples] == [stream[0:4], stream[4:8], stream[8:11]]
    assert all(e["labels"] == e["input_ids"] for e in examples)


def test_collator_pads_right_masks_and_ignores_padding() -> None:
    batch = Collator(pad_id=0)([{"input_ids": [5, 6, 7], "labels": [X, 6, 7]}, {"input_ids": [8], "labels": [8]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[X, 6, 7], [8, X, X]]


def test_data_files_of_each_type_are_read(tmp_path) -> None:
    (tmp_path / "a.csv").write_text('text,other\n"the cat",1\n')
    (tmp_path / "a.txt").write_text("the cat\n\na dog\n")
    (tmp_path / "a.json").write_text('[{"text": "the cat"}]')
    assert read_records(tmp_path / "a.csv") == [{"text": "the cat", "other": "1"}]
    assert read_records(tmp_path / "a.txt") == [{"text": "the cat"}, {"text": "a dog"}]
    assert read_records(tmp_path / "a.json") == [{"text": "the cat"}]


# -- checks before any weights load ----------------------------------------------------------------
CHATS = [
    {"messages": [{"role": "user", "content": "hello how are you"}, {"role": "assistant", "content": "fine thanks"}]},
    {"messages": [{"role": "user", "content": "what is two plus two"}, {"role": "assistant", "content": "four"}]},
    {"messages": [{"role": "user", "content": "the cat sat"}, {"role": "assistant", "content": "on the mat"}]},
]


def model_folder(
    folder: Path, *, layers: int = 2, vocab: int = 100, garbage: bool = True, chat: bool = True, seed: int = 0
) -> Path:
    """A model folder: config.json (and a tokenizer); with garbage=True its weights file is not a model."""
    model = tiny_llama(vocab=vocab, seed=seed)
    model.config.num_hidden_layers = layers
    if garbage:
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(model.config.to_json_string())
        (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    else:
        model.save_pretrained(folder)
    make_tokenizer(folder, chat=chat)
    return folder


def run_file(tmp_path: Path, **sections) -> Path:
    data_file = tmp_path / "chats.jsonl"
    data_file.write_text("".join(json.dumps(chat) + "\n" for chat in CHATS * 4))
    run = {
        "teacher": {"path": str(tmp_path / "teacher")},
        "student": {"path": str(tmp_path / "student")},
        "data": {"train_file": str(data_file), "format": "messages", "max_length": 32, "eval_fraction": 0.25},
        "training": {
            "output_dir": str(tmp_path / "out"),
            "log_dir": str(tmp_path / "logs"),
            "device": "cpu",
            "progress_bar": False,
        },
        "distillation": {"kd_loss_type": "kl", "temperature": 1.0, "hard_label_weight": 0.5},
        "optimization": {"batch_size": 3, "num_epochs": 2, "learning_rate": 1e-3},
    }
    for name, fields in sections.items():
        run[name] = {**run.get(name, {}), **fields}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(run))
    return path


def refused(path: Path, overrides=()) -> str:
    with pytest.raises(RunFileError) as caught:
        prepare_run(path, overrides=overrides)
    return str(caught.value)


@pytest.fixture
def garbage_models(tmp_path):
    model_folder(tmp_path / "teacher")
    model_folder(tmp_path / "student", layers=1)
    return tmp_path


def test_a_good_run_passes_the_checks_without_loading_the_garbage_weights(garbage_models) -> None:
    prepared = prepare_run(run_file(garbage_models))
    assert (len(prepared.train_examples), len(prepared.eval_examples)) == (9, 3)
    assert prepared.plan.effective_batch == 3 and prepared.plan.steps == 2 * 3


def test_a_missing_data_file_is_refused_with_its_field(garbage_models) -> None:
    message = refused(run_file(garbage_models), ["data.train_file=nowhere.jsonl"])
    assert "data.train_file: nowhere.jsonl: no such file" in message


def test_a_missing_column_is_refused_with_the_columns_there_are(garbage_models) -> None:
    message = refused(run_file(garbage_models, data={"messages_column": "conversation"}))
    assert "data.messages_column: column 'conversation' is missing" in message and "['messages']" in message


def test_messages_need_a_chat_template(tmp_path) -> None:
    model_folder(tmp_path / "teacher", chat=False)
    model_folder(tmp_path / "student", chat=False)
    assert "data.format: 'messages' renders chats with the tokenizer's chat template" in refused(run_file(tmp_path))


def test_a_layer_beyond_the_model_is_refused(garbage_models) -> None:
    match = {"layer_T": 2, "layer_S": 2, "feature": "hidden", "loss": "hidden_mse"}
    message = refused(run_file(garbage_models, distillation={"intermediate_matches": [match]}))
    assert "distillation.intermediate_matches.0.layer_S: layer 2 is beyond the student" in message
    assert "layer_T" not in message  # the teacher has 2 layers: hidden states 0..2


def test_vocabularies_that_differ_are_refused(tmp_path) -> None:
    model_folder(tmp_path / "teacher", vocab=100)
    model_folder(tmp_path / "student", vocab=64)
    message = refused(run_file(tmp_path))
    assert "distillation.kd_vocab_size: the teacher's vocabulary has 100 entries and the student's 64" in message


def test_an_unknown_loss_name_is_refused_with_its_field(garbage_models) -> None:
    message = refused(run_file(garbage_models, distillation={"kd_loss_type": "kll"}))
    assert "distillation.kd_loss_type: unknown KD loss 'kll'" in message


def test_a_misspelt_field_gets_a_did_you_mean_with_its_path(garbage_models) -> None:
    path = run_file(garbage_models)
    path.write_text(path.read_text().replace("max_length:", "max_lenght:"))
    assert "data.max_lenght: Extra inputs are not permitted; did you mean 'max_length'?" in refused(path)


def test_several_problems_are_reported_at_once(garbage_models) -> None:
    match = {"layer_T": 9, "layer_S": 0, "feature": "hidden", "loss": "hidden_mse"}
    message = refused(
        run_file(garbage_models, data={"eval_file": "missing.jsonl"}, distillation={"intermediate_matches": [match]})
    )
    assert "2 problem(s)" in message and "data.eval_file" in message and "layer_T" in message


def test_dry_run_prints_the_plan_and_loads_nothing(garbage_models) -> None:
    lines: list[str] = []
    result = train_from_file(run_file(garbage_models), dry_run=True, say=lines.append)
    assert result.student is None
    text = "\n".join(lines)
    assert "9 training examples" in text and "steps: 6 (effective batch 3" in text and "chunked" in text


# -- a whole run -----------------------------------------------------------------------------------
def test_train_exports_a_student_that_loads_and_computes_the_same_logits(tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    model_folder(tmp_path / "teacher", garbage=False, seed=0)
    model_folder(tmp_path / "student", layers=1, garbage=False, seed=1)
    result = train_from_file(run_file(tmp_path), say=lambda line: None)
    final = tmp_path / "out" / "final"
    assert {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "README.md",
        "run.yaml",
    } <= {path.name for path in final.iterdir()}
    loaded = AutoModelForCausalLM.from_pretrained(final).eval()
    batch = torch.tensor([ids("<|user|> hello how are you <|end|> <|assistant|> fine")])
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch).logits, result.student.eval()(batch).logits, rtol=0, atol=0)
    untrained = AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    assert not torch.equal(untrained.model.layers[0].mlp.up_proj.weight, loaded.model.layers[0].mlp.up_proj.weight)
    saved = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert saved == result.results and 0 <= saved["top1_agreement"] <= 1 and saved["tokens"] > 0
    card = (final / "README.md").read_text()
    assert "data fingerprint (sha256 of the data files)" in card and f"{saved['student']['loss']:.4f}" in card


def test_the_command_line_trains_from_a_run_file(tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    model_folder(tmp_path / "teacher", garbage=False, seed=0)
    model_folder(tmp_path / "student", layers=1, garbage=False, seed=1)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "distill_core", "train", str(run_file(tmp_path)), "optimization.num_epochs=1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "top-1 agreement with the teacher" in done.stdout
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "final").config.num_hidden_layers == 1


def test_the_documented_example_is_a_valid_run_config() -> None:
    from distill_core.run.config import RunConfig

    page = (REPO / "docs" / "run-config.md").read_text(encoding="utf-8")
    example = page.split("## A complete example", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    config = RunConfig.model_validate(yaml.safe_load(example))
    assert config.distillation.intermediate_matches[0].layer_T == 30 and config.data.format == "messages"


def test_a_misspelt_section_gets_a_did_you_mean(garbage_models) -> None:
    path = run_file(garbage_models)
    path.write_text(path.read_text().replace("optimization:", "optimisation:"))
    assert "optimisation: Extra inputs are not permitted; did you mean 'optimization'?" in refused(path)
