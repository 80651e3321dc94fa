"""distill_core.modules.unwrap: the one helper that looks through DataParallel, DDP and torch.compile."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distill_core.adaptors import CausalLMAdaptor, auto_adaptor_for, model_kind, output_head
from distill_core.modules import unwrap
from distill_core.vocab import output_vocab_size
from tests.tiny_lm import VOCAB, tiny_gpt2

# Importing torch.compile's machinery touches torch.jit's deprecated script_method; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")


def compiled(module: nn.Module) -> nn.Module:
    """``torch.compile``'s wrapper; nothing is compiled until it is called, which these tests never do."""
    wrapper = torch.compile(module)
    assert type(wrapper).__name__ == "OptimizedModule"
    return wrapper


def ddp_without_a_process_group(module: nn.Module) -> nn.parallel.DistributedDataParallel:
    """A DistributedDataParallel instance holding ``module``, built without a process group.

    A real one needs torch.distributed initialised (the torchrun tests cover that); unwrap only
    asks the instance's class and reads ``.module``, which this instance answers like a real one.
    """
    wrapper = nn.parallel.DistributedDataParallel.__new__(nn.parallel.DistributedDataParallel)
    nn.Module.__init__(wrapper)
    wrapper.module = module
    return wrapper


WRAPPERS = {
    "DataParallel": nn.DataParallel,
    "DistributedDataParallel": ddp_without_a_process_group,
    "torch.compile": compiled,
}
NESTINGS = [
    ("DataParallel",),
    ("DistributedDataParallel",),
    ("torch.compile",),
    ("DataParallel", "torch.compile"),  # outermost first: DataParallel(torch.compile(model))
    ("torch.compile", "DataParallel"),
    ("torch.compile", "DistributedDataParallel"),
    ("DistributedDataParallel", "torch.compile"),
    ("DataParallel", "DataParallel"),
    ("torch.compile", "DataParallel", "torch.compile"),
]


def wrap(model: nn.Module, nesting: tuple[str, ...]) -> nn.Module:
    for name in reversed(nesting):  # innermost first
        model = WRAPPERS[name](model)
    return model


def test_a_plain_model_is_its_own_unwrapped_self() -> None:
    model = nn.Linear(3, 2)
    assert unwrap(model) is model


@pytest.mark.parametrize("nesting", NESTINGS, ids=" of ".join)
def test_unwrap_strips_every_wrapper_in_any_nesting(nesting: tuple[str, ...]) -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    wrapped = wrap(model, nesting)
    assert wrapped is not model
    assert unwrap(wrapped) is model


def test_unwrap_keeps_a_model_whose_submodule_is_named_module() -> None:
    """Only the wrappers' ``.module`` is looked through, not any model's attribute of that name."""

    class Owner(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.module = nn.Linear(3, 2)

    owner = Owner()
    assert unwrap(owner) is owner
    assert unwrap(nn.DataParallel(compiled(owner))) is owner


@pytest.mark.parametrize("nesting", [("DataParallel", "torch.compile"), ("torch.compile", "DistributedDataParallel")])
def test_the_automatic_adaptors_and_the_vocabulary_check_look_through_nested_wrappers(
    nesting: tuple[str, ...],
) -> None:
    model = tiny_gpt2()
    wrapped = wrap(model, nesting)
    assert model_kind(wrapped) == "causal_lm"
    assert output_head(wrapped) is model.get_output_embeddings()
    assert output_vocab_size(wrapped) == VOCAB
    adaptor = auto_adaptor_for(wrapped, chunked=True)
    assert isinstance(adaptor, CausalLMAdaptor)
    assert adaptor.head is model.get_output_embeddings()
    assert adaptor.model_name == "GPT2LMHeadModel"
