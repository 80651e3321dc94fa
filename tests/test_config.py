"""Configs: validation against the live registry, field paths, limits, JSON round trips."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from distill_core import (
    DistillationConfig,
    DistillConfig,
    IntermediateMatch,
    TrainConfig,
    TrainingConfig,
)
from tests.conftest import run_cli

GOOD_MATCH = {
    "layer_T": 8,
    "layer_S": 2,
    "feature": "hidden",
    "loss": "hidden_mse",
    "weight": 1,
    "proj": ["linear", 384, 768],
}


def test_registered_loss_validates() -> None:
    config = DistillationConfig(temperature=8, intermediate_matches=[GOOD_MATCH])
    match = config.intermediate_matches[0]
    assert match.loss == "hidden_mse"
    assert (match.proj.name, match.proj.dim_in, match.proj.dim_out) == ("linear", 384, 768)


def test_misspelt_loss_names_path_and_suggestion() -> None:
    with pytest.raises(ValidationError) as info:
        DistillationConfig(intermediate_matches=[{**GOOD_MATCH, "loss": "hiden_mse"}])
    message = str(info.value)
    assert "did you mean 'hidden_mse'" in message
    assert "intermediate_matches.0.loss" in message
    assert "distill plugins" in message  # points to the listing command


def test_unknown_key_is_named() -> None:
    with pytest.raises(ValidationError) as info:
        DistillationConfig(intermediate_matches=[{**GOOD_MATCH, "wieght": 2}])
    assert "intermediate_matches.0.wieght" in str(info.value)
    with pytest.raises(ValidationError, match="temprature"):
        DistillationConfig(temprature=3)


@pytest.mark.parametrize(
    ("kwargs", "path"),
    [
        ({"temperature": 0}, "temperature"),
        ({"kd_loss_weight": -1}, "kd_loss_weight"),
        ({"kd_loss_type": "kll"}, "kd_loss_type"),
        ({"temperature_scheduler": "flws"}, "temperature_scheduler"),
        ({"hard_label_weight_scheduler": "linear_grow"}, "hard_label_weight_scheduler"),
        ({"intermediate_matches": [{**GOOD_MATCH, "layer_S": -1}]}, "intermediate_matches.0.layer_S"),
        ({"intermediate_matches": [{**GOOD_MATCH, "feature": "hiden"}]}, "intermediate_matches.0.feature"),
        ({"intermediate_matches": [{**GOOD_MATCH, "proj": ["lnear", 4, 8]}]}, "intermediate_matches.0.proj.name"),
        ({"intermediate_matches": [{**GOOD_MATCH, "proj": ["linear", 0, 8]}]}, "intermediate_matches.0.proj.dim_in"),
        ({"intermediate_matches": [{**GOOD_MATCH, "weight": -0.5}]}, "intermediate_matches.0.weight"),
        (  # a projection's params are checked by the same validator as a loss's, and named as precisely
            {"intermediate_matches": [{**GOOD_MATCH, "proj": {"name": "linear", "dim_in": 4, "dim_out": 8,
                                                               "params": {"zz": 1}}}]},
            "intermediate_matches.0.proj.params\n  Value error, projection 'linear' takes no params",
        ),
        ({"intermediate_matches": [{**GOOD_MATCH, "proj": ["linear", 4, 8, {"params": []}]}]},
         "intermediate_matches.0.proj.group_options\n  Value error, group_options must not contain 'params'"),
        ({"kd_loss_params": {"zz": 1}}, "kd_loss_params\n  Value error"),
    ],
)
def test_limits_and_names_are_validated(kwargs: dict, path: str) -> None:
    with pytest.raises(ValidationError) as info:
        DistillationConfig(**kwargs)
    assert path in str(info.value)



@pytest.mark.parametrize(
    ("name", "meant"), [("KL", "kl"), ("kl_div", "kl"), ("kldiv", "kl"), ("cross_entropy", "ce"), ("kullback", None)]
)
def test_an_unknown_kd_loss_type_suggests_the_loss_meant(name: str, meant: str | None) -> None:
    """KD loss names are short ('kl', 'ce'): spelling similarity alone suggested nothing for these."""
    with pytest.raises(ValidationError) as info:
        DistillationConfig(kd_loss_type=name)
    message = str(info.value)
    hint = f"; did you mean {meant!r}?" if meant else ""
    assert f"unknown KD loss {name!r}{hint} Registered KD losses: bce, ce, jsd, kl, mse," in message
    assert "distill plugins" in message

@pytest.mark.parametrize(
    "field", ["gradient_accumulation_steps", "ckpt_frequency", "ckpt_epoch_frequency", "ckpt_steps", "log_steps"]
)
def test_training_counts_must_be_positive(field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        TrainingConfig(**{field: 0})


def test_bad_device_is_named() -> None:
    with pytest.raises(ValidationError, match="device"):
        TrainingConfig(device="gpu7")


def test_loss_params_are_validated_by_the_loss_model() -> None:
    with pytest.raises(ValidationError) as info:
        DistillationConfig(intermediate_matches=[{**GOOD_MATCH, "params": {"no_such_option": 1}}])
    assert "intermediate_matches.0.params" in str(info.value)


def test_temperature_scheduler_forms() -> None:
    assert DistillationConfig(temperature_scheduler=["flsw", 1, 2]).temperature_schedule() == (
        "flsw",
        {"beta": 1.0, "gamma": 2.0},
    )
    assert DistillationConfig(temperature_scheduler={"name": "cwsm", "beta": 0.5}).temperature_schedule() == (
        "cwsm",
        {"beta": 0.5},
    )
    assert DistillationConfig().temperature_schedule() == ("none", {})
    with pytest.raises(ValidationError, match="at most 2 arguments"):
        DistillationConfig(temperature_scheduler=["flsw", 1, 2, 3])


def test_json_file_round_trip(tmp_path) -> None:
    content = {
        "temperature": 8,
        "intermediate_matches": [
            {**GOOD_MATCH, "proj": ["linear", 384, 768, {"lr": 0.001}]},
            {"layer_T": [0, 4], "layer_S": [0, 1], "feature": "hidden", "loss": "mmd", "weight": 0.5},
            {
                "layer_T": 4,
                "layer_S": 1,
                "feature": "attention",
                "loss": "attention_mse",
                "proj": {"name": "identity", "dim_in": 12, "dim_out": 12},
            },
        ],
    }
    path = tmp_path / "distill.json"
    path.write_text(json.dumps(content))
    config = DistillationConfig.from_json_file(path)
    written = config.to_dict()
    defaults = DistillationConfig().to_dict()
    for key, value in content.items():
        if key != "intermediate_matches":
            assert written[key] == value
    for key in defaults:
        assert key in written
    # every key the user wrote comes back unchanged, the list form of proj included
    for given, back in zip(content["intermediate_matches"], written["intermediate_matches"]):
        for key, value in given.items():
            if key == "proj" and isinstance(value, dict):
                assert {k: back[key][k] for k in value} == value
            else:
                assert back[key] == value
    assert written["intermediate_matches"][0]["proj"] == ["linear", 384, 768, {"lr": 0.001}]

    # exactly the file's content with the defaults filled in, nothing else
    match_defaults = {"weight": 1.0, "proj": None, "params": {}, "teacher": None}
    proj_defaults = {"params": {}, "group_options": {}}
    expected = {
        **defaults,
        **content,
        "intermediate_matches": [
            {
                **match_defaults,
                **match,
                **({"proj": {**proj_defaults, **match["proj"]}} if isinstance(match.get("proj"), dict) else {}),
            }
            for match in content["intermediate_matches"]
        ],
    }
    assert written == expected

    out = tmp_path / "again.json"
    config.to_json_file(out)
    again = DistillationConfig.from_json_file(out)
    assert again == config
    assert again.to_dict() == written
    assert json.loads(out.read_text()) == written


def test_training_config_round_trip(tmp_path) -> None:
    config = TrainingConfig(output_dir=str(tmp_path / "out"), ckpt_steps=5, log_steps=3, device="cpu")
    path = tmp_path / "train.json"
    config.to_json_file(path)
    assert TrainingConfig.from_json_file(path) == config
    assert TrainingConfig.from_dict(config.to_dict()) == config


def test_aliases_and_frozen() -> None:
    assert DistillConfig is DistillationConfig and TrainConfig is TrainingConfig
    config = DistillationConfig(intermediate_matches=None)
    assert config.intermediate_matches == []
    with pytest.raises(ValidationError):
        config.temperature = 2  # training never mutates a config
    assert isinstance(DistillationConfig(intermediate_matches=[GOOD_MATCH]).intermediate_matches[0], IntermediateMatch)


def test_cli_validate(tmp_path) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"training": {"log_steps": 5}, "distillation": {"intermediate_matches": [GOOD_MATCH]}}))
    result = run_cli("validate", str(good))
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout

    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {
                "training": {"log_steps": 0},
                "distillation": {"intermediate_matches": [{**GOOD_MATCH, "loss": "hiden_mse", "wieght": 1}]},
            }
        )
    )
    result = run_cli("validate", str(bad))
    assert result.returncode == 1
    assert "3 error(s)" in result.stderr
    assert "training.log_steps" in result.stderr
    assert "distillation.intermediate_matches.0.loss" in result.stderr
    assert "did you mean 'hidden_mse'" in result.stderr
    assert "distillation.intermediate_matches.0.wieght: Extra inputs are not permitted; did you mean 'weight'?" in (
        result.stderr
    )

    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"temperature": 2, "kd_loss_type": "kl"}))
    assert run_cli("validate", str(flat)).returncode == 0


def test_cli_schema_lists_live_names() -> None:
    result = run_cli("schema")
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    assert "hidden_mse" in schema["x-registry"]["match_loss"]
    distillation = schema["properties"]["distillation"]
    assert "kl" in distillation["properties"]["kd_loss_type"]["enum"]
    assert "linear" in distillation["$defs"]["ProjectionSpec"]["properties"]["name"]["enum"]


# -- non-finite numbers -----------------------------------------------------------------------------
INF, NAN = float("inf"), float("nan")


@pytest.mark.parametrize(
    ("kwargs", "path"),
    [
        ({"temperature": INF}, "temperature"),
        ({"temperature": NAN}, "temperature"),
        ({"kd_loss_weight": INF}, "kd_loss_weight"),
        ({"hard_label_weight": NAN}, "hard_label_weight"),
        ({"intermediate_matches": [{**GOOD_MATCH, "weight": INF}]}, "intermediate_matches.0.weight"),
        ({"temperature_scheduler": ["flsw", INF, 1]}, "temperature_scheduler"),
        ({"temperature_scheduler": {"name": "cwsm", "beta": NAN}}, "temperature_scheduler"),
    ],
)
def test_non_finite_numbers_are_refused_naming_the_field(kwargs: dict, path: str) -> None:
    with pytest.raises(ValidationError) as info:
        DistillationConfig(**kwargs)
    errors = info.value.errors()
    assert len(errors) == 1 and errors[0]["type"] == "finite_number"
    assert ".".join(str(part) for part in errors[0]["loc"]).startswith(path)
    assert "finite number" in str(info.value)


def test_cli_validate_refuses_infinity_in_json(tmp_path) -> None:
    path = tmp_path / "c.json"
    path.write_text('{"temperature": Infinity}')  # Python's json reads it
    result = run_cli("validate", str(path))
    assert result.returncode == 1
    assert "distillation.temperature: Input should be a finite number" in result.stderr


# -- coming from TextBrewer ---------------------------------------------------------------------------
@pytest.mark.parametrize("value", [True, False])
def test_is_caching_logits_points_to_the_teacher_cache(value: bool) -> None:
    with pytest.raises(ValidationError) as info:
        DistillationConfig(temperature=4, is_caching_logits=value)
    (error,) = info.value.errors()
    assert error["loc"] == ("is_caching_logits",)
    assert "teacher-output cache" in error["msg"] and "DistillationConfig.teacher_cache" in error["msg"]


def test_cli_validate_points_is_caching_logits_to_the_teacher_cache(tmp_path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"distillation": {"temperature": 4, "is_caching_logits": True}}))
    result = run_cli("validate", str(path))
    assert result.returncode == 1
    assert "distillation.is_caching_logits: `is_caching_logits` is TextBrewer's option" in result.stderr
    assert "teacher_cache" in result.stderr


def test_textbrewer_class_names_are_aliases() -> None:
    import distill_core
    from distill_core import distillers

    pairs = {
        "BasicTrainer": "BasicTraining",
        "BasicDistiller": "BasicDistillation",
        "GeneralDistiller": "Distillation",
        "MultiTeacherDistiller": "MultiTeacherDistillation",
        "MultiTaskDistiller": "MultiTaskDistillation",
    }
    for textbrewer_name, name in pairs.items():
        assert getattr(distill_core, textbrewer_name) is getattr(distill_core, name), textbrewer_name
        assert getattr(distillers, textbrewer_name) is getattr(distillers, name), textbrewer_name
        assert textbrewer_name in distill_core.__all__ and textbrewer_name in distillers.__all__
    from distill_core import BasicTrainer  # noqa: F401  (the import a TextBrewer script has)


def test_a_textbrewer_projection_name_validates() -> None:
    config = DistillationConfig(intermediate_matches=[{**GOOD_MATCH, "proj": ["relu", 384, 768]}])
    assert config.intermediate_matches[0].proj.name == "relu"
    assert DistillationConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (
            lambda: TrainingConfig(ckpt_frequncy=2),
            "ckpt_frequncy\n  Extra inputs are not permitted; did you mean 'ckpt_frequency'?",
        ),
        (
            lambda: DistillationConfig(temperture=4),
            "temperture\n  Extra inputs are not permitted; did you mean 'temperature'?",
        ),
        (
            lambda: DistillationConfig.from_dict(
                {
                    "intermediate_matches": [
                        {"layer_T": 1, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "wieght": 2}
                    ]
                }
            ),
            "intermediate_matches.0.wieght\n  Extra inputs are not permitted; did you mean 'weight'?",
        ),
    ],
)
def test_a_misspelt_key_in_python_gets_the_same_suggestion_as_distill_validate(build, expected) -> None:
    """The constructors used to say only "Extra inputs are not permitted"; only the CLI suggested."""
    with pytest.raises(ValidationError) as excinfo:
        build()
    assert expected in str(excinfo.value)


def test_a_key_with_no_close_field_keeps_the_plain_message_and_other_errors_stay() -> None:
    with pytest.raises(ValidationError) as excinfo:
        DistillationConfig(zzzz=1, temperature=-1)
    message = str(excinfo.value)
    assert "zzzz\n  Extra inputs are not permitted [type=extra_forbidden" in message
    assert "temperature\n  Input should be greater than 0" in message


def test_from_json_file_names_the_file_and_position_of_bad_json(tmp_path) -> None:
    path = tmp_path / "distill.json"
    path.write_text('{"temperature": 4,}')
    with pytest.raises(ValueError, match=r"distill.json: not valid JSON \(.* at line 1, column 19\)"):
        DistillationConfig.from_json_file(path)


# -- the sectioned file `distill validate` reads ------------------------------------------------------
def _config_file(tmp_path, content: dict):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(content))
    return path


def test_from_json_file_reads_its_own_section_of_the_file_distill_validate_accepts(tmp_path) -> None:
    distillation = {"temperature": 2, "intermediate_matches": [GOOD_MATCH]}
    path = _config_file(tmp_path, {"training": {"log_steps": 5}, "distillation": distillation})
    assert run_cli("validate", str(path)).returncode == 0
    assert TrainingConfig.from_json_file(path) == TrainingConfig(log_steps=5)
    assert DistillationConfig.from_json_file(path) == DistillationConfig(**distillation)
    assert DistillationConfig.from_dict(json.loads(path.read_text())) == DistillationConfig(**distillation)
    # a file with one section gives that config; the flat form is unchanged
    one_section = _config_file(tmp_path, {"distillation": {"temperature": 3}})
    assert DistillationConfig.from_json_file(one_section).temperature == 3
    assert DistillationConfig.from_json_file(_config_file(tmp_path, {"temperature": 5})).temperature == 5


def test_errors_of_a_section_name_it_and_a_missing_section_is_named(tmp_path) -> None:
    distillation = {"temperature": 0, "temprature": 1}
    path = _config_file(tmp_path, {"training": {"log_steps": 1}, "distillation": distillation})
    with pytest.raises(ValidationError) as info:
        DistillationConfig.from_json_file(path)
    message = str(info.value)
    assert "distillation.temperature\n  Input should be greater than 0" in message
    assert "distillation.temprature\n  Extra inputs are not permitted; did you mean 'temperature'?" in message
    expected = "DistillationConfig reads the 'distillation' section of a sectioned config, and this one has only 'tr"
    with pytest.raises(ValidationError, match=expected):
        DistillationConfig.from_json_file(_config_file(tmp_path, {"training": {"log_steps": 1}}))


@pytest.mark.parametrize(
    "content",
    [
        {"training": {"log_steps": 5}, "distilation": {"temperature": 2}},
        {"distilation": {"temperature": 2}},
        {"Distillation": {"temperature": 2}, "training": {}},
    ],
    ids=["beside-a-section", "alone", "capitalised"],
)
def test_a_misspelt_section_is_named_with_the_section_meant(tmp_path, content: dict) -> None:
    path = _config_file(tmp_path, content)
    (misspelt,) = [name for name in content if name != "training"]
    expected = f"{misspelt}: not a section; did you mean 'distillation'? A sectioned config has 'training' and/or"
    result = run_cli("validate", str(path))
    assert result.returncode == 1
    assert f"  {expected}" in result.stderr
    for read in (DistillationConfig.from_json_file, TrainingConfig.from_json_file):
        with pytest.raises(ValidationError) as info:
            read(path)
        assert expected.replace(": ", "\n  ", 1) in str(info.value)


def test_an_object_valued_field_is_not_taken_for_a_section(tmp_path) -> None:
    path = _config_file(tmp_path, {"teacher_cache": {"location": "memory"}, "kd_loss_params": {}})
    assert DistillationConfig.from_json_file(path).teacher_cache.location == "memory"
    assert run_cli("validate", str(path)).returncode == 0
