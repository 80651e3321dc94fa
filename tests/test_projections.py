"""Built-in projections (`distill_plugins_projections.linear` and `.identity`)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distill_core.components import ComponentInfo
from distill_plugins_projections import identity, linear

MODULES = {"linear": linear, "identity": identity}


def test_linear_is_a_linear_layer_with_bert_init():
    torch.manual_seed(0)
    layer = linear.build_projection(name="linear", dim_in=512, dim_out=1024, params=None)
    assert isinstance(layer, nn.Linear)
    assert (layer.in_features, layer.out_features) == (512, 1024)
    assert torch.all(layer.bias == 0)
    assert layer.weight.mean().item() == pytest.approx(0.0, abs=1e-3)
    assert layer.weight.std().item() == pytest.approx(0.02, rel=0.02)


@pytest.mark.parametrize("name, activation", [("linear_relu", nn.ReLU), ("linear_tanh", nn.Tanh)])
def test_linear_with_activation(name, activation):
    torch.manual_seed(0)
    module = linear.build_projection(name=name, dim_in=4, dim_out=6, params=None)
    assert isinstance(module[0], nn.Linear) and isinstance(module[1], activation)
    assert torch.all(module[0].bias == 0)
    x = torch.randn(2, 3, 4)
    torch.testing.assert_close(module(x), activation()(module[0](x)))
    assert module(x).shape == (2, 3, 6)


def test_projections_are_fresh_modules():
    first = linear.build_projection(name="linear", dim_in=4, dim_out=6, params=None)
    second = linear.build_projection(name="linear", dim_in=4, dim_out=6, params=None)
    assert first is not second
    assert not torch.equal(first.weight, second.weight)


@pytest.mark.parametrize("dim_in, dim_out", [(0, 4), (4, -1), (2.5, 4)])
def test_linear_refuses_bad_widths(dim_in, dim_out):
    with pytest.raises(ValueError, match="positive integer"):
        linear.build_projection(name="linear", dim_in=dim_in, dim_out=dim_out, params=None)


def test_identity_passes_through():
    module = identity.build_projection(name="identity", dim_in=8, dim_out=8, params=None)
    x = torch.randn(2, 3, 8)
    assert isinstance(module, nn.Identity)
    assert module(x) is x


def test_identity_refuses_differing_widths():
    with pytest.raises(ValueError, match="dim_in == dim_out") as excinfo:
        identity.build_projection(name="identity", dim_in=384, dim_out=768, params=None)
    assert "384" in str(excinfo.value) and "768" in str(excinfo.value)
    assert "`linear`" in str(excinfo.value)


@pytest.mark.parametrize("module_name", MODULES)
def test_hook_returns_none_for_a_foreign_name(module_name):
    for foreign in ("hidden_mse", "conv", "identity" if module_name == "linear" else "linear"):
        assert MODULES[module_name].build_projection(name=foreign, dim_in=4, dim_out=4, params=None) is None


@pytest.mark.parametrize("module_name", MODULES)
def test_declared_components_are_built_by_their_module(module_name):
    module = MODULES[module_name]
    declared = module.declare_components()
    assert declared
    for info in declared:
        assert isinstance(info, ComponentInfo) and info.kind == "projection"
        assert info.summary and "\n" not in info.summary
        built = module.build_projection(name=info.name, dim_in=4, dim_out=4, params=None)
        assert isinstance(built, nn.Module)
        assert built(torch.randn(2, 4)).shape == (2, 4)


def test_declared_names():
    assert [info.name for info in linear.declare_components()] == ["linear", "linear_relu", "linear_tanh"]
    assert [info.name for info in identity.declare_components()] == ["identity"]


def test_projection_modules_register_as_pluggy_plugins():
    """Hookimpl names and arguments must fit the specs (pluggy validates them on register), and the
    hooks called through pluggy declare and build working projections."""
    import pluggy

    from distill_core import hookspecs

    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    manager.register(linear)
    manager.register(identity)
    declared = [info.name for infos in manager.hook.declare_components() for info in infos]
    assert sorted(declared) == ["identity", "linear", "linear_relu", "linear_tanh"]

    x = torch.randn(2, 4, 3)
    through = manager.hook.build_projection(name="identity", dim_in=3, dim_out=3, params=None)
    assert through(x) is x
    # the first non-None result: the linear module's, mapping width 3 to 5 through tanh, trainable
    for name in ("linear_tanh", "tanh"):
        built = manager.hook.build_projection(name=name, dim_in=3, dim_out=5, params=None)
        weight = next(p for p in built.parameters() if p.dim() == 2)
        assert weight.shape == (5, 3)
        out = built(x)
        torch.testing.assert_close(out, torch.tanh(x @ weight.T))  # the bias starts at zero
        out.sum().backward()
        assert weight.grad is not None and weight.grad.abs().sum() > 0
    assert manager.hook.build_projection(name="conv", dim_in=3, dim_out=5, params=None) is None
