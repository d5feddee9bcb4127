"""`gfocal` with a planted failure, for tests/test_distributed.py: under torchrun or mpirun,
process FAIL_RANK raises a DatasetError at its FAIL_AT-th training step; then
`python tests/distributed_fault.py FAIL_RANK FAIL_AT train CONFIG ...` is `gfocal train ...`."""
import sys

from gfocal.cli import main
from gfocal.data.coco import DatasetError
from gfocal.launch import process_label
from gfocal.runtime import configure_frameworks


def plant(framework, fail_rank, fail_at):
    from gfocal.ports import load_port
    train = load_port(framework).train
    real_step, calls = train.train_step, []

    def step(model, optimizer, batch):
        calls.append(1)
        if process_label().startswith(f"rank {fail_rank} ") and len(calls) == fail_at:
            raise DatasetError(f"planted failure at step {fail_at}")
        return real_step(model, optimizer, batch)

    train.train_step = step


if __name__ == "__main__":
    configure_frameworks()
    fail_rank, fail_at, argv = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    plant(argv[argv.index("--framework") + 1], fail_rank, fail_at)
    sys.exit(main(argv))
