"""The run file's LoRA student: only the adapter trains, and the export merges it (or saves it alone)."""

from __future__ import annotations

import torch
from test_run_config import ids, model_folder, run_file

from distill_core.run import train_from_file

LORA = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}


def test_only_the_adapter_trains_and_the_merged_export_computes_the_adapted_logits(tmp_path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model_folder(tmp_path / "teacher", garbage=False, seed=0)
    model_folder(tmp_path / "student", garbage=False, seed=1)
    quiet = {"say": lambda line: None}
    adapter_run = train_from_file(run_file(tmp_path, student={"lora": LORA}, export={"merge_lora": False}), **quiet)
    base = dict(AutoModelForCausalLM.from_pretrained(tmp_path / "student").named_parameters())
    adapters = {}
    for name, weight in adapter_run.student.named_parameters():
        if "lora_" in name:
            adapters[name] = weight
            continue
        base_name = name.removeprefix("base_model.model.").replace(".base_layer", "")
        assert torch.equal(weight, base[base_name]), f"{name} changed, but only the adapter trains"
    lora_B = [weight for name, weight in adapters.items() if "lora_B" in name]
    assert len(lora_B) == 4 and all(weight.abs().sum() > 0 for weight in lora_B)  # peft starts them at zero
    adapter_folder = tmp_path / "out" / "final"
    assert (adapter_folder / "adapter_config.json").is_file() and not (adapter_folder / "model.safetensors").exists()

    merged_run = train_from_file(
        run_file(tmp_path, student={"lora": LORA}, training={"output_dir": str(tmp_path / "merged")}), **quiet
    )
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged" / "final").eval()
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "student"), adapter_folder)
    batch = torch.tensor([ids("<|user|> hello how are you <|end|> <|assistant|> fine")])
    with torch.no_grad():
        torch.testing.assert_close(merged(batch).logits, adapted.eval()(batch).logits, rtol=0, atol=1e-5)
        untrained = AutoModelForCausalLM.from_pretrained(tmp_path / "student").eval()
        assert not torch.allclose(merged(batch).logits, untrained(batch).logits, atol=1e-4)
    assert "LoRA adapter (r 4" in (tmp_path / "merged" / "final" / "README.md").read_text()
    assert merged_run.results["tokens"] > 0
