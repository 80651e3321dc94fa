"""Resume replays the data order of a DataLoader that shuffles with its own ``generator=``.

Such a loader draws its permutation (and its workers' seeds) from that generator, not from torch's
global RNG; a resumed process builds it anew from the same seed, so without its saved state the
resumed epoch would get the first epoch's order.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from distill_core import Distillation, DistillationConfig, TrainingConfig
from tests.tiny import bert_adaptor, tiny_bert, tiny_data

EXAMPLES, BATCH, EPOCHS = 16, 4, 3  # 4 steps an epoch, 12 in all


class _Stop(Exception):
    pass


def _run(output_dir, *, stop_at: int | None = None, resume: bool = False) -> dict[str, torch.Tensor]:
    """A fresh process's run: models, data and the loader's generator built anew from the same seeds."""
    teacher, student = tiny_bert(32, 2, 2, seed=0), tiny_bert(16, 2, 2, seed=1)
    data = tiny_data(EXAMPLES)
    rows = [{key: value[index] for key, value in data.items()} for index in range(EXAMPLES)]
    loader = DataLoader(rows, batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(7))
    distiller = Distillation(
        TrainingConfig(output_dir=str(output_dir), ckpt_steps=2, progress_bar=False, log_dir=None),
        DistillationConfig(temperature=2, hard_label_weight=0.5),
        teacher,
        student,
        bert_adaptor,
        bert_adaptor,
    )

    def callback(model, step):
        if step == stop_at:
            raise _Stop

    torch.manual_seed(1234)
    try:
        distiller.train(
            torch.optim.AdamW(student.parameters(), lr=1e-2),
            dataloader=loader,
            num_epochs=EPOCHS,
            callback=callback,
            resume_from="latest" if resume else None,
        )
    except _Stop:
        pass
    return {name: value.detach().clone() for name, value in student.state_dict().items()}


@pytest.mark.parametrize("stop_at", [2, 6, 10])  # epoch 1, and in the middle of epochs 2 and 3
def test_resume_with_a_loader_generator_ends_equal_to_the_uninterrupted_run(tmp_path, stop_at) -> None:
    uninterrupted = _run(tmp_path / "whole")
    stopped = _run(tmp_path / "split", stop_at=stop_at)
    assert any(not torch.equal(stopped[name], uninterrupted[name]) for name in uninterrupted)
    resumed = _run(tmp_path / "split", resume=True)
    for name, value in uninterrupted.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=0, msg=name)
