"""A run file's model path may be a Hub id (org/name) already in the local Hugging Face cache; nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

from test_run_config import model_folder, refused, run_file

from distill_core.run import prepare_run, train_from_file

SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"


def cached_model(cache: Path, repo_id: str, **model_options) -> Path:
    """Lay out ``repo_id`` as huggingface_hub caches it: models--org--name/{refs/main, snapshots/<hash>/...}."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / SNAPSHOT
    snapshot.parent.mkdir(parents=True)
    model_folder(snapshot, **model_options)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SNAPSHOT)
    return snapshot


def test_a_hub_id_in_the_local_cache_is_read_from_its_snapshot(tmp_path, monkeypatch) -> None:
    cache = tmp_path / "hf" / "hub"
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    snapshot = cached_model(cache, "tiny-org/tiny-llama", layers=1)  # garbage weights: a check loads none
    model_folder(tmp_path / "teacher")
    prepared = prepare_run(run_file(tmp_path, student={"path": "tiny-org/tiny-llama"}))
    assert Path(prepared.checked.config.student.path) == snapshot
    assert prepared.checked.student_config["num_hidden_layers"] == 1


def test_a_cached_hub_teacher_and_student_train(tmp_path, monkeypatch) -> None:
    from transformers import AutoModelForCausalLM

    cache = tmp_path / "cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    cached_model(cache, "org/teacher", garbage=False, seed=0)
    cached_model(cache, "org/student", layers=1, garbage=False, seed=1)
    path = run_file(tmp_path, teacher={"path": "org/teacher"}, student={"path": "org/student"})
    train_from_file(path, overrides=["optimization.num_epochs=1"], say=lambda line: None)
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "final").config.num_hidden_layers == 1


def test_a_hub_id_missing_from_the_cache_names_the_id_the_cache_and_the_command(tmp_path, monkeypatch) -> None:
    cache = tmp_path / "empty-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    model_folder(tmp_path / "student", layers=1)
    message = refused(run_file(tmp_path, teacher={"path": "HuggingFaceTB/SmolLM2-135M"}))
    assert "teacher.path: HuggingFaceTB/SmolLM2-135M: no such folder" in message
    assert f"not in the local Hugging Face cache {cache}" in message
    assert "hf download HuggingFaceTB/SmolLM2-135M" in message
    assert "huggingface-cli download HuggingFaceTB/SmolLM2-135M" in message
    assert message.count("teacher.path") == 1  # reported once, not again as a folder without config.json
