"""``python -m rain train CONFIG``: run (or continue) one training stage described by a TOML file.

    python -m rain train rain/training/configs/depth_stage1.toml
    accelerate launch --num_processes 8 -m rain train depth_stage1.toml     # several GPUs, same file

Running the same command again after an interruption continues from the latest checkpoint.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(commands) -> argparse.ArgumentParser:
    train = commands.add_parser("train", help="train a RAIN stage (stage1, stage2, distill2d, distill3d) from a "
                                              "TOML config; rerun to resume")
    train.add_argument("config", type=Path, help="the stage's TOML file (examples: rain/training/configs/)")
    train.add_argument("--resume", default=None, metavar="auto|none|DIR",
                       help="auto: latest checkpoint of output_dir (default, or the config's `resume`); none: start "
                            "over; DIR: that checkpoint")
    train.add_argument("--stop-after", type=int, default=None, metavar="STEPS",
                       help="end this run after that many optimizer steps (a checkpoint is written there; default: run to the end)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar (e.g. in log files)")
    return train


def run(args) -> int:
    from .checkpoints import CheckpointError
    from .config import load_config
    from .data import DatasetError
    from .loop import train

    # Config mistakes are ValueErrors, reported in one line by rain.cli; so are these.
    try:
        config = load_config(args.config)
        if args.resume is not None:
            config.resume = args.resume
        result = train(config, stop_after=args.stop_after, show_progress=not args.no_progress)
    except (DatasetError, CheckpointError) as error:
        raise ValueError(str(error)) from None
    if not result.main_process:
        return 0   # one summary, from the main process
    if result.first_step:
        print(f"continued from the checkpoint of step {result.first_step}")
    if result.step >= config.train.steps:
        print(f"{config.stage} done at step {result.step}: the trained set is in {result.export_dir}")
    else:
        print(f"{config.stage} stopped at step {result.step} of {config.train.steps}; checkpoint {result.checkpoint}; "
              f"run the same command to continue")
    return 0
