"""Plugin manager and registry: entry points, lazy loading, blocking, duplicates, lookup, binding."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch
from pydantic import BaseModel

from distill_core import (
    ComponentInfo,
    DuplicateComponentError,
    PluginError,
    PluginLoadError,
    UnknownComponentError,
    configure_plugins,
    get_loss,
    get_plugin_manager,
    get_projection,
    get_registry,
    hookimpl,
    list_components,
)
from tests.conftest import run_cli

BUILTIN = {
    "kd_loss": {"ce", "mse", "kl", "bce", "reverse_kl", "jsd", "tvd", "skew_kl", "skew_reverse_kl"},
    "match_loss": {
        "hidden_mse",
        "cos",
        "pkd",
        "attention_mse",
        "attention_mse_sum",
        "attention_ce",
        "attention_ce_mean",
        "attention_kl",
        "gram",
        "mmd",
        "relation_kl",
    },
    "projection": {"linear", "linear_relu", "linear_tanh", "identity"},
}
#: other names of built-ins (TextBrewer's): listed with their component, never as components of their own
BUILTIN_ALIASES = {"gram": ["fsp"], "mmd": ["nst"], "linear_relu": ["relu"], "linear_tanh": ["tanh"]}


def test_import_loads_no_plugin() -> None:
    code = "import distill_core, distill_core.plugins as p; print(p._manager is None)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_cli_lists_every_builtin_with_distribution_distill() -> None:
    result = run_cli("plugins", "--json")
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    by_kind: dict[str, set[str]] = {}
    for item in listed:
        assert set(item) == {"name", "aliases", "kind", "plugin", "distribution", "version", "summary", "params"}
        assert item["distribution"] == "distill"
        assert item["summary"], f"{item['name']} has no summary"
        by_kind.setdefault(item["kind"], set()).add(item["name"])
    for kind, names in BUILTIN.items():
        assert names <= by_kind[kind], f"missing {kind}: {names - by_kind[kind]}"
    aliases = {item["name"]: item["aliases"] for item in listed if item["aliases"]}
    assert aliases == BUILTIN_ALIASES
    all_aliases = {alias for names in aliases.values() for alias in names}
    assert not all_aliases & {item["name"] for item in listed}  # an alias is not listed as a component

    table = run_cli("plugins")
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["component", "aliases", "kind", "plugin", "distribution", "version", "summary"]
    assert any(line.split()[:2] == ["hidden_mse", "match_loss"] for line in lines)
    assert any(line.split()[:3] == ["gram", "fsp", "match_loss"] for line in lines)
    assert not any(line.split()[:1] in (["fsp"], ["nst"]) for line in lines)


def test_each_builtin_is_its_own_entry_point() -> None:
    manager = get_plugin_manager()
    origins = {c.plugin for c in list_components()}
    assert len(origins) >= 6  # one plugin per module, not one big plugin
    for component in list_components():
        origin = manager.origin_of(manager.get_plugin(component.plugin))
        assert origin.entry_point and "distill_plugins_" in origin.entry_point


def _huber_plugin(name: str = "test_huber") -> types.SimpleNamespace:
    """A plugin object as a user would write it, providing match loss ``name``."""

    class Params(BaseModel):
        delta: float = 1.0

    @hookimpl
    def declare_components():
        return [ComponentInfo(kind="match_loss", name=name, params=Params, summary="Huber between features")]

    @hookimpl
    def compute_match_loss(name, feature_S, feature_T, mask, params):
        if name != declared:
            return None
        return torch.nn.functional.huber_loss(feature_S, feature_T.detach(), delta=params.delta)

    declared = name
    return types.SimpleNamespace(declare_components=declare_components, compute_match_loss=compute_match_loss)


def test_runtime_plugin_is_listed_validated_and_computed(register_plugin) -> None:
    register_plugin(_huber_plugin(), "test-huber-plugin")
    component = get_registry().get("match_loss", "test_huber")
    assert component.distribution == "(registered at runtime)"
    assert component.plugin == "test-huber-plugin"
    loss = get_loss("test_huber", delta=0.5)
    a, b = torch.zeros(2, 3), torch.full((2, 3), 2.0)
    assert torch.allclose(loss(a, b), torch.tensor(0.875))

    from distill_core import DistillationConfig

    config = DistillationConfig(
        intermediate_matches=[
            {"layer_T": 1, "layer_S": 0, "feature": "hidden", "loss": "test_huber", "params": {"delta": 2}}
        ]
    )
    assert config.intermediate_matches[0].params == {"delta": 2.0}


def test_unregistering_removes_the_name(register_plugin) -> None:
    plugin = register_plugin(_huber_plugin("test_gone"), "test-gone")
    assert get_registry().has("match_loss", "test_gone")
    get_plugin_manager().unregister(plugin)
    assert not get_registry().has("match_loss", "test_gone")


def test_duplicate_name_names_both_plugins(register_plugin) -> None:
    register_plugin(_huber_plugin("hidden_mse"), "test-impostor")
    with pytest.raises(DuplicateComponentError) as info:
        get_registry()
    message = str(info.value)
    assert "hidden_mse" in message and "test-impostor" in message
    assert "'distill'" in message  # the built-in's distribution
    assert "DISTILL_BLOCK_PLUGINS" in message


def test_declaring_without_hook_is_an_error(register_plugin) -> None:
    @hookimpl
    def declare_components():
        return [ComponentInfo(kind="projection", name="test_noproj")]

    register_plugin(types.SimpleNamespace(declare_components=declare_components), "test-nohook")
    with pytest.raises(PluginError, match="implements no build_projection hook"):
        get_registry()


def test_component_info_rejects_bad_declarations() -> None:
    with pytest.raises(ValueError, match="kind"):
        ComponentInfo(kind="loss", name="x")
    with pytest.raises(ValueError, match="name"):
        ComponentInfo(kind="match_loss", name="has space")
    with pytest.raises(TypeError, match="params"):
        ComponentInfo(kind="match_loss", name="x", params=dict)


def test_unknown_name_says_what_exists() -> None:
    with pytest.raises(UnknownComponentError) as info:
        get_registry().get("match_loss", "atention_mse")
    message = str(info.value)
    assert "unknown match loss 'atention_mse'" in message
    assert "did you mean 'attention_mse'" in message
    assert "hidden_mse" in message and "distill plugins" in message
    with pytest.raises(UnknownComponentError, match="is a KD loss, not a match loss"):
        get_registry().get("match_loss", "kl")


def _sample_inputs(name: str) -> tuple[object, object, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    if name in {"gram", "fsp", "mmd", "nst"}:
        return (
            [torch.randn(2, 4, 6, generator=gen) for _ in range(2)],
            [torch.randn(2, 4, 6, generator=gen) for _ in range(2)],
            mask,
        )
    if name.startswith("attention"):
        return (
            torch.randn(2, 3, 4, 4, generator=gen).softmax(-1),
            torch.randn(2, 3, 4, 4, generator=gen).softmax(-1),
            mask,
        )
    return torch.randn(2, 4, 6, generator=gen), torch.randn(2, 4, 6, generator=gen), mask


def test_bound_call_equals_plain_hook_call_for_every_builtin() -> None:
    registry = get_registry()
    hook = get_plugin_manager().hook
    for name in registry.names("match_loss"):
        component = registry.get("match_loss", name)
        params = component.validate_params({})
        student, teacher, mask = _sample_inputs(name)
        bound = component.call(name=name, feature_S=student, feature_T=teacher, mask=mask, params=params)
        plain = hook.compute_match_loss(name=name, feature_S=student, feature_T=teacher, mask=mask, params=params)
        assert torch.equal(bound, plain), name
    logits_S, logits_T = torch.randn(3, 5), torch.randn(3, 5)
    for name in registry.names("kd_loss"):
        component = registry.get("kd_loss", name)
        params = component.validate_params({})
        kwargs = dict(name=name, logits_S=logits_S, logits_T=logits_T, temperature=2.0, mask=None, params=params)
        assert torch.equal(component.call(**kwargs), hook.compute_kd_loss(**kwargs)), name
    for name in registry.names("projection"):
        component = registry.get("projection", name)
        torch.manual_seed(0)
        bound = component.call(name=name, dim_in=4, dim_out=4, params=component.validate_params({}))
        torch.manual_seed(0)
        plain = hook.build_projection(name=name, dim_in=4, dim_out=4, params=component.validate_params({}))
        assert type(bound) is type(plain)
        x = torch.randn(2, 4)
        assert torch.equal(bound(x), plain(x)), name


def test_public_helpers() -> None:
    kl = get_loss("kl")
    logits_S, logits_T = torch.randn(3, 5), torch.randn(3, 5)
    assert kl(logits_S, logits_S, temperature=2.0).abs() < 1e-6
    assert kl(logits_S, logits_T, temperature=2.0) > 0
    with pytest.raises(TypeError, match="takes no temperature"):
        get_loss("hidden_mse")(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), temperature=2.0)
    projection = get_projection("linear", 4, 8)
    assert projection(torch.zeros(2, 4)).shape == (2, 8)
    with pytest.raises(UnknownComponentError, match="did you mean 'linear'"):
        get_projection("linaer", 4, 8)


def _fake_distribution(root: Path, name: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    """Lay out an installed distribution (dist-info + modules) under ``root``, as pip would."""
    info = root / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = "".join(f"{key} = {value}\n" for key, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[distill]\n{lines}")
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))


def test_broken_plugin_is_an_error_naming_it_until_fixed_or_blocked(tmp_path, monkeypatch) -> None:
    _fake_distribution(
        tmp_path,
        "distill-broken",
        {"broken_loss": "distill_broken_mod"},
        {"distill_broken_mod": "raise ImportError('needs the package frobnicate')\n"},
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    configure_plugins(distributions=["distill", "distill-broken"])
    try:
        manager = get_plugin_manager()  # loading records the failure; the registry reports it
        assert len(manager.failures) == 1
        with pytest.raises(PluginLoadError) as info:
            get_registry()
        message = str(info.value)
        assert "broken_loss = distill_broken_mod" in message and "'distill-broken'" in message
        assert "frobnicate" in message
        assert "pip uninstall distill-broken" in message and "DISTILL_BLOCK_PLUGINS=broken_loss" in message
        # every way in reports it: config validation and the public helpers
        from distill_core import DistillationConfig

        with pytest.raises(PluginLoadError, match="broken_loss"):
            DistillationConfig(kd_loss_type="kl")
        with pytest.raises(PluginLoadError, match="broken_loss"):
            get_loss("hidden_mse")
        with pytest.raises(PluginLoadError, match="broken_loss"):
            list_components()
        # the healthy plugins are still there for a listing
        assert get_registry(allow_load_failures=True).has("match_loss", "hidden_mse")

        # the remedy the message names works
        configure_plugins(distributions=["distill", "distill-broken"], blocked=["broken_loss"])
        assert get_registry().has("match_loss", "hidden_mse")
        assert DistillationConfig(kd_loss_type="kl").kd_loss_type == "kl"
    finally:
        configure_plugins(distributions=["distill"])


def test_several_broken_plugins_are_all_named(tmp_path, monkeypatch) -> None:
    _fake_distribution(tmp_path, "distill-broken-a", {"broken_a": "broken_a_mod"}, {"broken_a_mod": "1 / 0\n"})
    _fake_distribution(tmp_path, "distill-broken-b", {"broken_b": "broken_b_mod"}, {"broken_b_mod": "import nope_x\n"})
    monkeypatch.syspath_prepend(str(tmp_path))
    configure_plugins(distributions=["distill", "distill-broken-a", "distill-broken-b"])
    try:
        with pytest.raises(PluginLoadError) as info:
            get_registry()
        message = str(info.value)
        assert message.startswith("2 distill plugin entry points failed to load")
        assert "ZeroDivisionError" in message and "nope_x" in message
        assert "DISTILL_BLOCK_PLUGINS=broken_a" in message and "DISTILL_BLOCK_PLUGINS=broken_b" in message
    finally:
        configure_plugins(distributions=["distill"])


def _aliased_plugin(name: str, aliases: tuple[str, ...], seen: list[str]) -> types.SimpleNamespace:
    """A match-loss plugin declaring ``name`` with ``aliases``; records the name its hook is called with."""

    @hookimpl
    def declare_components():
        return [ComponentInfo(kind="match_loss", name=name, summary="L1 between features", aliases=aliases)]

    @hookimpl
    def compute_match_loss(name, feature_S, feature_T, mask, params):
        if name != declared:
            return None
        seen.append(name)
        return (feature_S - feature_T.detach()).abs().mean()

    declared = name
    return types.SimpleNamespace(declare_components=declare_components, compute_match_loss=compute_match_loss)


def test_aliases_resolve_to_the_same_component(register_plugin) -> None:
    seen: list[str] = []
    register_plugin(_aliased_plugin("test_l1", ["test_abs", "test_mae"], seen), "test-l1-plugin")
    registry = get_registry()
    component = registry.get("match_loss", "test_l1")
    assert registry.get("match_loss", "test_abs") is component and registry.get("match_loss", "test_mae") is component
    assert component.aliases == ("test_abs", "test_mae")  # a list is stored as a tuple
    assert registry.has("match_loss", "test_mae") and "test_mae" not in registry.names("match_loss")
    assert "test_mae" in registry.names("match_loss", aliases=True)
    assert [c.name for c in list_components()].count("test_l1") == 1
    assert not any(c.name in ("test_abs", "test_mae") for c in list_components())
    # computing by alias calls the hook with the canonical name, so a plugin checks one name only
    a, b = torch.zeros(2, 3), torch.ones(2, 3)
    assert float(get_loss("test_abs")(a, b)) == 1.0
    from distill_core import DistillationConfig

    config = DistillationConfig(
        intermediate_matches=[{"layer_T": 1, "layer_S": 0, "feature": "hidden", "loss": "test_mae"}]
    )
    assert config.intermediate_matches[0].loss == "test_mae"  # the config keeps what the user wrote
    from distill_core.terms.matches import bind_match

    bound = bind_match(config.intermediate_matches[0], 0, "match")
    bound.check_student_feature(a)
    assert float(bound.compute(a, b, None)) == 1.0
    assert seen == ["test_l1", "test_l1"]
    assert component.describe()["aliases"] == ["test_abs", "test_mae"]


def test_builtin_aliases_work_by_lookup_config_and_plain_hook_call() -> None:
    registry = get_registry()
    assert registry.get("match_loss", "fsp") is registry.get("match_loss", "gram")
    assert registry.get("match_loss", "nst") is registry.get("match_loss", "mmd")
    assert registry.get("projection", "relu") is registry.get("projection", "linear_relu")
    from distill_core import DistillationConfig

    config = DistillationConfig(
        intermediate_matches=[
            {"layer_T": [0, 1], "layer_S": [0, 1], "feature": "hidden", "loss": "fsp"},
            {"layer_T": 1, "layer_S": 0, "feature": "hidden", "loss": "hidden_mse", "proj": ["tanh", 4, 8]},
        ]
    )
    assert config.intermediate_matches[0].loss == "fsp"
    assert isinstance(get_projection("relu", 4, 8)[1], torch.nn.ReLU)
    student, teacher, mask = _sample_inputs("gram")
    torch.testing.assert_close(get_loss("fsp")(student, teacher, mask), get_loss("gram")(student, teacher, mask))
    hook = get_plugin_manager().hook
    torch.testing.assert_close(
        hook.compute_match_loss(name="nst", feature_S=student, feature_T=teacher, mask=mask, params=None),
        get_loss("mmd")(student, teacher, mask),
    )
    with pytest.raises(UnknownComponentError) as info:
        registry.get("match_loss", "fps")
    assert "did you mean 'fsp'" in str(info.value) and "gram (alias fsp)" in str(info.value)


def test_an_alias_taken_twice_is_a_duplicate(register_plugin) -> None:
    register_plugin(_aliased_plugin("test_own_name", ("fsp",), []), "test-alias-thief")
    with pytest.raises(DuplicateComponentError) as info:
        get_registry()
    message = str(info.value)
    assert "match loss 'fsp' is declared twice" in message and "(as an alias of 'gram')" in message
    assert "test-alias-thief" in message and "'distill'" in message and "DISTILL_BLOCK_PLUGINS" in message


def test_a_name_equal_to_another_components_alias_is_a_duplicate(register_plugin) -> None:
    register_plugin(_huber_plugin("nst"), "test-nst-thief")
    with pytest.raises(DuplicateComponentError, match=r"'nst' is declared twice.*\(as an alias of 'mmd'\)"):
        get_registry()


def test_component_info_positional_form_still_works_and_checks_aliases() -> None:
    info = ComponentInfo("match_loss", "x_loss", None, "one line")
    assert (info.kind, info.name, info.params, info.summary) == ("match_loss", "x_loss", None, "one line")
    assert info.aliases == ()
    with pytest.raises(ValueError, match="alias"):
        ComponentInfo(kind="match_loss", name="x", aliases=("has space",))
    with pytest.raises(ValueError, match="differ from its name"):
        ComponentInfo(kind="match_loss", name="x", aliases=("x",))
    assert ComponentInfo(kind="match_loss", name="x", aliases="y").aliases == ("y",)


def test_blocking_a_plugin_by_env(tmp_path) -> None:
    result = run_cli("plugins", "--json", env={"DISTILL_BLOCK_PLUGINS": "losses_relation"})
    assert result.returncode == 0, result.stderr
    names = {item["name"] for item in json.loads(result.stdout)}
    assert "relation_kl" not in names and "hidden_mse" in names
    configure_plugins(distributions=["distill"], blocked=["projections_identity"])
    try:
        assert not get_registry().has("projection", "identity")
        assert get_registry().has("projection", "linear")
    finally:
        configure_plugins(distributions=["distill"])


def test_broken_plugin_cli_reports_and_fails(tmp_path) -> None:
    _fake_distribution(
        tmp_path,
        "distill-broken",
        {"broken_loss": "distill_broken_mod"},
        {"distill_broken_mod": "import no_such_module_anywhere\n"},
    )
    import os

    env = {
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "DISTILL_PLUGIN_DISTRIBUTIONS": "distill,distill-broken",
    }
    result = run_cli("plugins", env=env)
    assert result.returncode == 1
    assert "hidden_mse" in result.stdout
    assert "broken_loss = distill_broken_mod" in result.stderr and "distill-broken" in result.stderr
    json_result = run_cli("plugins", "--json", env=env)
    assert json_result.returncode == 1 and "hidden_mse" in {item["name"] for item in json.loads(json_result.stdout)}
    # a command that needs the registry stops with the error (and no traceback)
    config = tmp_path / "c.json"
    config.write_text('{"kd_loss_type": "kl"}')
    result = run_cli("validate", str(config), env=env)
    assert result.returncode == 1
    assert result.stderr.startswith("error: distill plugin entry point 'broken_loss = distill_broken_mod'")
    assert "Traceback" not in result.stderr
    result = run_cli("validate", str(config), env={**env, "DISTILL_BLOCK_PLUGINS": "broken_loss"})
    assert result.returncode == 0, result.stderr


def test_dead_helpers_stay_removed() -> None:
    """Issue 14: unused helpers were removed so nobody builds on them (PluginLoadError replaced check_failures)."""
    from distill_core.plugins import DistillPluginManager
    from distill_core.terms import matches as matching

    assert not hasattr(matching, "layer_list")
    assert not hasattr(matching.OutputCapture, "attached")
    assert not hasattr(DistillPluginManager, "check_failures")
