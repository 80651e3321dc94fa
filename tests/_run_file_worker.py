"""``distill train RUN.yaml`` in a child process that can be stopped at a known checkpoint.

    python tests/_run_file_worker.py RUN_FILE [--resume] [--block-at STEP --marker FILE]

``--block-at`` wraps the checkpointer's save: once the checkpoint of that step is on disk, the
process writes ``--marker`` and sleeps, so the parent can kill it with every earlier file complete.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from distill_core.run import train_from_file  # noqa: E402
from distill_core.runtime.checkpointing import Checkpointer  # noqa: E402


def block_after_checkpoint(step: int, marker: Path) -> None:
    """Make the checkpoint of ``step`` the last thing this process does: mark it, then sleep."""
    save = Checkpointer.save

    def save_then_block(self, state, optimizer, scheduler) -> None:  # noqa: ANN001
        save(self, state, optimizer, scheduler)
        if state.global_step == step:
            marker.write_text(str(step))
            time.sleep(600)

    Checkpointer.save = save_then_block


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_file")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--block-at", type=int)
    parser.add_argument("--marker")
    args = parser.parse_args()
    if args.block_at is not None:
        block_after_checkpoint(args.block_at, Path(args.marker))
    train_from_file(args.run_file, resume=args.resume)


if __name__ == "__main__":
    main()
