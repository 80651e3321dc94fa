"""Students built from the teacher (distill_core.students) on tiny random-init Llama (GQA) and BERT models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

from distill_core.students import build_student, calibrate, layer_table, plan_student, plot_layer_scores
from distill_core.students.build import compact_ranges
from distill_core.students.importance import block_influence_sums
from distill_core.students.selection import LAYER_METHODS, select_heads, select_layers
from distill_core.students.text import block_batches, read_documents

HEAD_DIM = 8


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=100, hidden_size=48, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2, attn_implementation="eager")
    return LlamaForCausalLM(config).eval()


def tiny_bert(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, num_labels=3,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attn_implementation="eager")
    return BertForSequenceClassification(config).eval()


def batches(count: int = 3, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    result = []
    for _ in range(count):
        mask = torch.ones(2, 10, dtype=torch.long)
        mask[1, 7:] = 0  # a padded row: its padding must not count
        result.append({"input_ids": torch.randint(3, 100, (2, 10), generator=generator), "attention_mask": mask})
    return result


def rows(units: list[int], size: int = HEAD_DIM) -> list[int]:
    return [unit * size + offset for unit in units for offset in range(size)]


@pytest.fixture(scope="module")
def llama_scores():
    return calibrate(tiny_llama(), batches(), progress=False)


def test_llama_student_weights_are_the_teachers_slices(llama_scores):
    teacher = tiny_llama()
    plan = plan_student(teacher, layers=2, heads=3, intermediate=40, hidden=40, scores=llama_scores)
    student = build_student(teacher, plan)
    assert len(plan.heads[0]) == 3 and len(plan.kv_heads[0]) == 1 and len(plan.hidden) == 40
    config = student.config
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads,
            config.intermediate_size, config.hidden_size, config.head_dim) == (2, 3, 1, 40, 40, HEAD_DIM)
    hidden = torch.tensor(plan.hidden)
    assert torch.equal(student.model.embed_tokens.weight, teacher.model.embed_tokens.weight[:, hidden])
    assert torch.equal(student.lm_head.weight, teacher.lm_head.weight[:, hidden])
    assert torch.equal(student.model.norm.weight, teacher.model.norm.weight[hidden])
    for position, layer_index in enumerate(plan.layers):
        source, target = teacher.model.layers[layer_index], student.model.layers[position]
        q = torch.tensor(rows(plan.heads[position]))
        kv = torch.tensor(rows(plan.kv_heads[position]))
        mlp = torch.tensor(plan.mlp[position])
        # every kept query head belongs to a kept key/value group (3 query heads per group here)
        assert {head // 3 for head in plan.heads[position]} == set(plan.kv_heads[position])
        attention, teacher_attention = target.self_attn, source.self_attn
        assert torch.equal(attention.q_proj.weight, teacher_attention.q_proj.weight[q][:, hidden])
        assert torch.equal(attention.k_proj.weight, teacher_attention.k_proj.weight[kv][:, hidden])
        assert torch.equal(attention.v_proj.weight, teacher_attention.v_proj.weight[kv][:, hidden])
        assert torch.equal(attention.o_proj.weight, teacher_attention.o_proj.weight[hidden][:, q])
        assert torch.equal(target.mlp.gate_proj.weight, source.mlp.gate_proj.weight[mlp][:, hidden])
        assert torch.equal(target.mlp.up_proj.weight, source.mlp.up_proj.weight[mlp][:, hidden])
        assert torch.equal(target.mlp.down_proj.weight, source.mlp.down_proj.weight[hidden][:, mlp])
        assert torch.equal(target.input_layernorm.weight, source.input_layernorm.weight[hidden])
        assert torch.equal(target.post_attention_layernorm.weight, source.post_attention_layernorm.weight[hidden])
    ids = batches()[0]["input_ids"]
    assert student(ids).logits.shape == (2, 10, 100)


def test_bert_student_weights_are_the_teachers_slices():
    teacher = tiny_bert()
    scores = calibrate(teacher, batches(), progress=False)
    plan = plan_student(teacher, layers=2, heads=2, hidden=16, intermediate=24, scores=scores)
    student = build_student(teacher, plan)
    assert (student.config.num_hidden_layers, student.config.num_attention_heads, student.config.hidden_size,
            student.config.intermediate_size) == (2, 2, 16, 24)
    hidden = torch.tensor(plan.hidden)
    assert torch.equal(student.bert.embeddings.word_embeddings.weight,
                       teacher.bert.embeddings.word_embeddings.weight[:, hidden])
    assert torch.equal(student.bert.embeddings.LayerNorm.bias, teacher.bert.embeddings.LayerNorm.bias[hidden])
    assert torch.equal(student.bert.pooler.dense.weight, teacher.bert.pooler.dense.weight[hidden][:, hidden])
    assert torch.equal(student.classifier.weight, teacher.classifier.weight[:, hidden])
    for position, layer_index in enumerate(plan.layers):
        source, target = teacher.bert.encoder.layer[layer_index], student.bert.encoder.layer[position]
        q = torch.tensor(rows(plan.heads[position]))
        mlp = torch.tensor(plan.mlp[position])
        for name in ("query", "key", "value"):
            assert torch.equal(getattr(target.attention.self, name).weight,
                               getattr(source.attention.self, name).weight[q][:, hidden])
            assert torch.equal(getattr(target.attention.self, name).bias, getattr(source.attention.self, name).bias[q])
        assert torch.equal(target.attention.output.dense.weight, source.attention.output.dense.weight[hidden][:, q])
        assert torch.equal(target.intermediate.dense.weight, source.intermediate.dense.weight[mlp][:, hidden])
        assert torch.equal(target.output.dense.weight, source.output.dense.weight[hidden][:, mlp])
        assert torch.equal(target.output.LayerNorm.weight, source.output.LayerNorm.weight[hidden])
    assert student(**batches()[0]).logits.shape == (2, 3)


@pytest.mark.parametrize("make", [tiny_llama, tiny_bert], ids=["llama", "bert"])
def test_keeping_everything_gives_the_teachers_logits_exactly(make):
    teacher = make()
    scores = calibrate(teacher, batches(1), progress=False)
    config = teacher.config
    plan = plan_student(teacher, layers=config.num_hidden_layers, heads=config.num_attention_heads,
                        intermediate=config.intermediate_size, hidden=config.hidden_size, scores=scores)
    student = build_student(teacher, plan)
    batch = batches()[0]
    assert torch.equal(student(**batch).logits, teacher(**batch).logits)


@pytest.mark.parametrize("make", [tiny_llama, tiny_bert], ids=["llama", "bert"])
def test_export_round_trips_with_equal_logits(make, tmp_path):
    teacher = make()
    scores = calibrate(teacher, batches(1), progress=False)
    plan = plan_student(teacher, layers=2, heads=2, hidden=16 if make is tiny_bert else 40, intermediate=32,
                        scores=scores)
    student = build_student(teacher, plan, teacher_name="tiny-teacher")
    student.save_pretrained(tmp_path)
    loaded = type(student).from_pretrained(tmp_path, attn_implementation=student.config._attn_implementation).eval()
    batch = batches()[0]
    assert torch.equal(loaded(**batch).logits, student(**batch).logits)
    record = json.loads((tmp_path / "config.json").read_text())["distill_student"]
    assert record["teacher"] == "tiny-teacher" and record["layers"] == plan.layers
    assert record["heads"] == plan.heads and record["hidden"] == compact_ranges(plan.hidden)
    assert record["teacher_config"]["num_hidden_layers"] == teacher.config.num_hidden_layers


def test_causal_student_generates():
    teacher = tiny_llama()
    student = build_student(teacher, plan_student(teacher, layers=2, method="first_last"))
    output = student.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=4, do_sample=False)
    assert output.shape == (1, 7)


@pytest.mark.parametrize("make", [tiny_llama, tiny_bert], ids=["llama", "bert"])
def test_one_forward_pass_per_calibration_batch(make):
    teacher = make()
    calls = []
    handle = teacher.register_forward_pre_hook(lambda module, args: calls.append(1))
    scores = calibrate(teacher, batches(4), progress=False)
    handle.remove()
    assert len(calls) == 4 and scores.batches == 4
    layers = teacher.config.num_hidden_layers
    assert len(scores.block_influence) == layers and len(scores.heads) == layers
    assert scores.heads[0].shape == (teacher.config.num_attention_heads,)
    assert scores.mlp[0].shape == (teacher.config.intermediate_size,)
    assert scores.hidden.shape == (teacher.config.hidden_size,)
    assert scores.tokens == 4 * (10 + 7) and scores.samples == 8  # padding is not a token


def test_block_influence_of_an_identity_layer_is_zero():
    teacher = tiny_llama()
    layer = teacher.model.layers[1]
    with torch.no_grad():  # no attention or MLP output: the residual block returns its input
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
    scores = calibrate(teacher, batches(), progress=False)
    assert scores.block_influence[1] == pytest.approx(0.0, abs=1e-6)
    assert min(scores.block_influence[0], scores.block_influence[2], scores.block_influence[3]) > 1e-3
    assert 1 not in select_layers(4, method="block_influence", keep=3, block_influence=scores.block_influence)


def test_block_influence_counts_only_valid_tokens():
    inputs = torch.randn(1, 3, 4)
    outputs = inputs.clone()
    outputs[0, 2] = -inputs[0, 2]  # cos = -1 on the padded token: 1 - cos = 2 if it counted
    total, count = block_influence_sums(inputs, outputs, torch.tensor([[1, 1, 0]]))
    assert total == pytest.approx(0.0, abs=1e-6) and count == 2


def test_layer_rules():
    assert select_layers(30, method="first_last", keep=6) == [0, 1, 2, 27, 28, 29]
    assert select_layers(12, method="uniform", keep=4) == [2, 5, 8, 11]
    assert select_layers(5, method="explicit", explicit=[4, 0, 2]) == [0, 2, 4]
    assert select_layers(4, method="block_influence", keep=2, block_influence=[0.3, 0.1, 0.2, 0.4]) == [0, 3]
    with pytest.raises(ValueError, match="distinct layer indices"):
        select_layers(5, method="explicit", explicit=[0, 7])
    with pytest.raises(ValueError, match="calibrate first"):
        select_layers(5, method="block_influence", keep=2)
    from distill_core.students.command import LAYER_METHODS as CLI_METHODS
    assert CLI_METHODS == LAYER_METHODS


def test_heads_are_kept_by_group_under_gqa():
    scores = torch.tensor([0.1, 0.2, 0.3, 5.0, 0.1, 0.1])  # 2 groups of 3 query heads
    assert select_heads(scores, num_kv_heads=2, keep_heads=2, keep_kv_heads=1) == ([3, 4], [1])
    assert select_heads(scores, num_kv_heads=2, keep_heads=4, keep_kv_heads=2) == ([1, 2, 3, 4], [0, 1])
    with pytest.raises(ValueError, match="multiple of the kept key/value heads"):
        select_heads(scores, num_kv_heads=2, keep_heads=3, keep_kv_heads=2)


def test_width_pruning_needs_scores_and_bert_widths_must_agree():
    with pytest.raises(ValueError, match="calibrate"):
        plan_student(tiny_llama(), heads=3)
    bert = tiny_bert()
    with pytest.raises(ValueError, match="need hidden 16"):
        plan_student(bert, heads=2, scores=calibrate(bert, batches(1), progress=False))


def test_layer_report(tmp_path):
    table = layer_table([0.2, 0.5, 0.1], [1])
    assert table.splitlines()[2].split() == ["1", "0.500000", "1", "yes"]
    path = plot_layer_scores([0.2, 0.5, 0.1], [1], tmp_path / "layers.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_calibration_text_files(tmp_path):
    (tmp_path / "a.txt").write_text("first document\n\nsecond one\n")
    (tmp_path / "b.jsonl").write_text('{"text": "one"}\n{"text": "two"}\n')
    assert read_documents(tmp_path / "a.txt") == ["first document", "second one"]
    assert read_documents(tmp_path / "b.jsonl") == ["one", "two"]
    (tmp_path / "c.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(ValueError, match="c.jsonl:1"):
        read_documents(tmp_path / "c.jsonl")
    batch = next(block_batches([[5, 6, 7], [8]], batch_size=2))
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_cli_shrink(tmp_path, capsys):
    from distill_core.cli import main

    class Tokenizer:  # whitespace words -> ids, enough for calibration
        pad_token_id = 0

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [3 + len(word) for word in text.split()]}

        def save_pretrained(self, folder):
            (Path(folder) / "tokenizer.txt").write_text("words")

    teacher_dir = tmp_path / "teacher"
    tiny_llama().save_pretrained(teacher_dir)
    text = tmp_path / "calibration.txt"
    text.write_text("\n".join("the quick brown fox jumps over the lazy dog " * 3 for _ in range(4)))
    import distill_core.students.command as command

    original = command._load_teacher
    command._load_teacher = lambda folder: (original(folder)[0], Tokenizer())
    try:
        status = main(["shrink", str(teacher_dir), "--out", str(tmp_path / "student"), "--layers", "2",
                       "--heads", "3", "--calibration", str(text), "--no-progress"])
    finally:
        command._load_teacher = original
    assert status == 0
    printed = capsys.readouterr().out
    assert "block influence" in printed and "kept layers" in printed
    student = LlamaForCausalLM.from_pretrained(tmp_path / "student")
    assert student.config.num_hidden_layers == 2 and student.config.num_attention_heads == 3
    report = json.loads((tmp_path / "student" / "importance.json").read_text())
    assert len(report["block_influence"]) == 4 and (tmp_path / "student" / "layers.png").is_file()
    assert main(["shrink", str(teacher_dir), "--out", str(tmp_path / "x"), "--layers", "2"]) == 2
