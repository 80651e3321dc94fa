"""Topic classification: distil a fine-tuned MiniLM-L6 into a 2-layer student on BBC News (5 topics).

1. Fine-tune the packaged all-MiniLM-L6-v2 (6 layers, hidden 384) on BBC News articles (headline
   and body, truncated to ``--max-length`` wordpieces) labelled business, entertainment, politics,
   sports or tech, with ``BasicTraining`` (or take it from the teacher cache).
2. Cut a 2-layer student out of it (teacher layers 3 and 6, as ``student_init_layers`` advises).
3. Distil with ``Distillation``: KD on the logits (T²-scaled KL at temperature T) plus
   hidden-state matches from ``uniform_layer_mapping`` (student layer 1 <- teacher layer 3,
   student layer 2 <- teacher layer 6).
4. Print the dev accuracy of teacher and student; exit with status 1 unless the student beats the
   majority class by ``--min-metric`` (default: majority share + 0.05).

    python examples/classify_bbc.py                    # default sizes, a few minutes
    python examples/classify_bbc.py --train-size 200 --dev-size 100 --max-length 64 --teacher-steps 20 --steps 20

The data split is fixed and seeded (``distill_core.demo.data``); docs/examples.md has the numbers.
"""

from __future__ import annotations

import sys

from classify_rotten_tomatoes import main  # the same script; only the data set and its sizes differ

DEFAULTS = {
    "train_size": 800,
    "dev_size": 427,
    "max_length": 128,
    "batch_size": 16,
    "teacher_steps": 60,
    "steps": 100,
    "teacher_lr": 2e-4,
    "student_lr": 2e-4,
    "temperature": 2.0,
    "hidden_weight": 1.0,
    "output_dir": "examples-out/bbc",
}


if __name__ == "__main__":
    sys.exit(main(dataset="bbc", defaults=DEFAULTS, doc=__doc__))
