"""`python -m rain train CONFIG` as a launcher runs it (torchrun, accelerate launch, or plain), with two test hooks
read from the environment:

* ``RAIN_TEST_SIGINT_AT=N`` (and ``RAIN_TEST_SIGINT_RANK``, default 0): that process sends itself SIGINT when its
  N-th micro-batch (1-based) starts — a Ctrl+C at a chosen point, on one rank only;
* ``RAIN_TEST_WEIGHTS=DIR``: when training ends, every process writes ``DIR/rank-R.safetensors`` with the trainable
  weights it holds, whole (the training itself writes only from the main process).
"""

import os
import signal
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from accelerate import Accelerator

from rain.training import loop
from rain.training.sharding import full_tensor


def main() -> int:
    rank = int(os.environ.get("RANK", "0"))
    stages = []
    make_stage = loop.make_stage

    def recording_make_stage(*args, **kwargs):
        stage = make_stage(*args, **kwargs)
        stages.append(stage)
        sigint_at = int(os.environ.get("RAIN_TEST_SIGINT_AT", "0"))
        if sigint_at and rank == int(os.environ.get("RAIN_TEST_SIGINT_RANK", "0")):
            loss, calls = stage.loss, [0]

            def loss_with_sigint(*a, **k):
                calls[0] += 1
                if calls[0] == sigint_at:
                    os.kill(os.getpid(), signal.SIGINT)
                return loss(*a, **k)
            stage.loss = loss_with_sigint
        return stage

    loop.make_stage = recording_make_stage
    folder = os.environ.get("RAIN_TEST_WEIGHTS")
    end_training = Accelerator.end_training

    def record_then_end(accelerator):
        # While the process group lives: a sharded run's weights are whole only when every process gathers them.
        if folder and stages:
            modules = stages[0].models.modules()
            state = {f"{name}.{key}": full_tensor(value.detach()).cpu().contiguous()
                     for name, module in modules.items() for key, value in module.named_parameters()
                     if value.requires_grad}
            Path(folder).mkdir(parents=True, exist_ok=True)
            save_file(state, str(Path(folder) / f"rank-{rank}.safetensors"))
        end_training(accelerator)

    Accelerator.end_training = record_then_end
    from rain.cli import main as rain_main
    code = rain_main(["train", *sys.argv[1:], "--no-progress"])
    return code


if __name__ == "__main__":
    torch.set_num_threads(1)
    raise SystemExit(main())
