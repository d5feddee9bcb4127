"""`gfocal` with a planted failure, for tests/test_distributed.py: under torchrun or mpirun,
process FAIL_RANK raises a DatasetError at its FAIL_AT-th training step (options in the
environment: below); then
`python tests/distributed_fault.py FAIL_RANK FAIL_AT train CONFIG ...` is `gfocal train ...`."""
import json
import os
import sys

from gfocal.cli import main
from gfocal.data.coco import DatasetError
from gfocal.launch import process_label
from gfocal.runtime import configure_frameworks


def plant(framework, fail_rank, fail_at):
    """FAIL_RANK -1 fails nowhere. With GFOCAL_TEST_SHARES=DIR each process also appends the
    image ids of every batch it trains on to DIR/rank<R>.jsonl (which images it saw)."""
    from gfocal.ports import load_port
    train = load_port(framework).train
    real_step, calls = train.train_step, []
    shares = os.environ.get("GFOCAL_TEST_SHARES")
    in_evaluation = bool(os.environ.get("GFOCAL_TEST_FAIL_EVAL"))

    def step(model, optimizer, batch, scaler=None):
        calls.append(1)
        if shares:
            rank = process_label().split()[1] if process_label() else "0"
            with open(os.path.join(shares, f"rank{rank}.jsonl"), "a") as f:
                f.write(json.dumps([int(m["img_id"]) for m in batch["img_metas"]]) + "\n")
        if (process_label().startswith(f"rank {fail_rank} ") and len(calls) == fail_at
                and not in_evaluation):
            raise DatasetError(f"planted failure at step {fail_at}")
        return real_step(model, optimizer, batch, scaler)

    train.train_step = step
    if os.environ.get("GFOCAL_TEST_FAIL_EVAL"):
        plant_in_evaluation(framework, fail_rank, fail_at)
    if os.environ.get("GFOCAL_TEST_RESULTS"):
        record_results(os.environ["GFOCAL_TEST_RESULTS"])


def plant_in_evaluation(framework, fail_rank, fail_at):
    """GFOCAL_TEST_FAIL_EVAL=1: process FAIL_RANK fails at its FAIL_AT-th evaluation batch
    instead of its FAIL_AT-th training step."""
    from gfocal.ports import load_port
    port = load_port(framework)
    real_build, calls = port.build_detector, []

    def build(model_cfg):
        model = real_build(model_cfg)
        real_predict = model.predict

        def predict(batch):
            calls.append(1)
            if process_label().startswith(f"rank {fail_rank} ") and len(calls) == fail_at:
                raise DatasetError(f"planted failure at evaluation batch {fail_at}")
            return real_predict(batch)

        model.predict = predict
        return model

    port.build_detector = build


def record_results(path):
    """GFOCAL_TEST_RESULTS=FILE: the COCO results each evaluation computes its statistics
    of (process 0 only, in a job) are written to FILE (the last one kept)."""
    from gfocal import engine
    real_evaluate = engine.coco_evaluate

    def evaluate(coco_gt, results, **kwargs):
        with open(path, "w") as f:
            json.dump(results, f)
        return real_evaluate(coco_gt, results, **kwargs)

    engine.coco_evaluate = evaluate


if __name__ == "__main__":
    configure_frameworks()
    fail_rank, fail_at, argv = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    plant(argv[argv.index("--framework") + 1], fail_rank, fail_at)
    sys.exit(main(argv))
