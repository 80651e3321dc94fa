"""Extra scalars combine across ranks as what they are: counts summed, rates pooled (issue 22, item 5).

The torchrun side (``teacher_cache/entries`` of two ranks) is in tests/test_distributed.py.
"""

from __future__ import annotations

import pytest
import torch

from distill_core.tracking import Count, Ratio, Tracker
from tests.tb_reader import read_scalars


def test_counts_are_summed_ratios_pooled_and_plain_values_averaged_over_ranks(tmp_path) -> None:
    """As rank 0 of two: the other rank's parts are added by the (stand-in) all-reduce."""
    other_rank = torch.tensor([5.0, 1.0, 6.0, 0.0, 0.0, 3.0], dtype=torch.float64)
    tracker = Tracker(
        log_dir=str(tmp_path),
        log_steps=1,
        progress_bar=False,
        total_steps=1,
        initial_step=0,
        is_main=True,
        term_names=[],
        sum_across_ranks=lambda parts: parts + other_rank,
        world_size=2,
    )
    tracker.add_step(1, [torch.tensor(1.0)])
    tracker.log(
        1,
        weights=[],
        lrs=[],
        temperature=None,
        stacked=torch.ones(1, 1),
        extra={
            "entries": Count(3),
            "hit_rate": Ratio(3, 4),  # 3 hits of 4 here, 1 of 6 on the other rank: 4 of 10
            "idle": Ratio(0, 0),  # no rank had anything to rate: not logged
            "seconds": 1.0,
        },
    )
    tracker.close()
    logged = {tag: values[0][1] for tag, values in read_scalars(tmp_path).items()}
    assert logged["entries"] == 8
    assert logged["hit_rate"] == pytest.approx(0.4)
    assert "idle" not in logged
    assert logged["seconds"] == pytest.approx(2.0)  # (1 + 3) / 2
