"""`gfocal train|test|compare`: one entry point for both ports.

Frameworks are imported lazily, so `--framework jittor` works without PyTorch installed.
"""
import argparse
import json
import os
import sys
import traceback

from gfocal.atomic import check_output_file
from gfocal.launch import LAUNCHERS, process_label
from gfocal.runtime import configure_frameworks
from gfocal.ports import FRAMEWORKS
from gfocal.config import MAX_SEED
from gfocal.precision import check_amp
from gfocal.tuning import check_setting

STAT_FORMAT = "{:<6} {:.3f}"
DEFAULT_BUDGET_MINUTES = 20


def _at_least(minimum, kind, maximum=None):
    """An argparse type: a number of `kind` >= minimum (and <= maximum, if given; argparse
    says which value is bad)."""
    def parse(text):
        value = kind(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text} is below {minimum}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"{text} is above {maximum}")
        return value
    parse.__name__ = kind.__name__
    return parse


def _add_seed(p):
    p.add_argument("--seed", type=_at_least(0, int, MAX_SEED),
                   help="override the config's train.seed (weight initialisation, data "
                        "order, flips)")


def _add_framework(p):
    p.add_argument("--framework", choices=list(FRAMEWORKS), required=True)


def _add_device(p):
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: the config's "
                                    "train.device, itself 'auto': CUDA when a GPU is present)")


def _add_amp(p):
    p.add_argument("--amp", help="mixed precision: off | bf16 | fp16 (the parity policy) | "
                                 "native-bf16 | native-fp16 (the framework's own AMP) "
                                 "(default: the config's train.amp, itself 'off'; "
                                 "gfocal/precision.py)")


def _add_tuning(p):
    p.add_argument("--tuning", help="speed setting: default | tuned (default: the config's "
                                    "train.tuning, itself 'default'; gfocal/tuning.py)")


def _train_overrides(args):
    """The config sections the command line overrides (--seed, --amp, --tuning)."""
    train = {}
    if getattr(args, "seed", None) is not None:
        train["seed"] = args.seed
    if getattr(args, "amp", None) is not None:
        train["amp"] = check_amp(args.amp)
    if getattr(args, "tuning", None) is not None:
        train["tuning"] = check_setting(args.tuning)
    return {"train": train} if train else {}


def build_parser():
    parser = argparse.ArgumentParser(prog="gfocal", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one port")
    p.add_argument("config")
    _add_framework(p)
    p.add_argument("--work-dir", required=True)
    start = p.add_mutually_exclusive_group()
    start.add_argument("--resume", help="checkpoint of either port to resume from (weights "
                                        "and momentum are converted)")
    start.add_argument("--overwrite", action="store_true",
                       help="start a new run in a work dir holding one (its files are moved "
                            "to <work dir>/previous/<time>/, not deleted)")
    p.add_argument("--init-weights", help="initial weights (any format the converter reads)")
    p.add_argument("--max-iters", type=_at_least(1, int),
                   help="stop after this many iterations")
    _add_device(p)
    _add_seed(p)
    _add_amp(p)
    _add_tuning(p)
    p.add_argument("--launcher", choices=list(LAUNCHERS), default="none",
                   help="data-parallel training: pytorch (started by torchrun, "
                        "--framework torch) or mpi (started by mpirun, --framework jittor)")

    p = sub.add_parser("test", help="evaluate a checkpoint on the val split")
    p.add_argument("config")
    p.add_argument("checkpoint", help="a checkpoint of either port, or an official GFocalV2 / "
                                      "mmdetection one (converted in memory)")
    _add_framework(p)
    p.add_argument("--eval", choices=["bbox"], default="bbox")
    p.add_argument("--out", help="write the COCO results JSON here")
    _add_device(p)
    _add_amp(p)
    _add_tuning(p)

    p = sub.add_parser("compare", help="train both ports from identical weights and write "
                                       "the comparison report")
    p.add_argument("config", nargs="?", default=None,
                   help="config (default: configs/gfl_r18_mini.py on the bundled data)")
    p.add_argument("--data-root", help="a COCO-format folder instead of the bundled data")
    p.add_argument("--out-dir", default="reports/comparison")
    p.add_argument("--epochs", type=_at_least(1, int), help="override optim.epochs")
    p.add_argument("--max-iters", type=_at_least(1, int),
                   help="stop each port after this many iterations")
    p.add_argument("--seeds", type=_at_least(1, int), default=1,
                   help="initialisations to compare (each trains all three arms: N times the "
                        "cost); the report shows the spread of final AP")
    p.add_argument("--budget-minutes", type=_at_least(0, float), default=DEFAULT_BUDGET_MINUTES,
                   help="the control arm runs the whole epochs that fit in this budget for "
                        f"the first seed (default {DEFAULT_BUDGET_MINUTES}; 0: no limit)")
    _add_device(p)
    _add_seed(p)
    _add_amp(p)
    _add_tuning(p)
    return parser


def _print_stats(stats):
    for name, value in stats.items():
        print(STAT_FORMAT.format(name, value))


def run(args):
    """Carry out one command; returns the exit status."""
    from gfocal import engine
    from gfocal.config import load_config
    if args.command == "train":
        cfg = load_config(args.config, _train_overrides(args))
        from gfocal.interrupt import TrainingInterrupted
        try:
            out = engine.train(engine.TrainRun(
                cfg, args.framework, args.work_dir, resume=args.resume,
                init_weights=args.init_weights, max_iters=args.max_iters, device=args.device,
                launcher=args.launcher, overwrite=args.overwrite))
        except TrainingInterrupted as stop:  # the engine has said where the progress is
            return stop.code
        if out.rank != 0:
            return 0  # a process of a data-parallel job other than 0: process 0 reports
        if out.complete:
            print(f"nothing to train: {out.checkpoint} already holds iteration "
                  f"{out.iters} of {out.total} (the run is complete)")
            return 0
        print(f"checkpoint: {out.checkpoint}\nlog: {out.log}")
        for ev in out.evals:
            print(f"epoch {ev['epoch']}: " + json.dumps(ev["stats"]))
    elif args.command == "test":
        cfg = load_config(args.config, _train_overrides(args))
        if args.out:
            check_output_file(args.out)  # before the model is built and the images read
        port, model = engine.build_model(cfg, args.framework, device=args.device)
        engine.load_weights(port, model, args.checkpoint, cfg)
        from gfocal.evaluation.coco_eval import save_results
        results = []
        _print_stats(engine.evaluate(cfg, port, model, progress=True, results_out=results))
        if args.out:  # after the statistics: a failed write loses nothing already printed
            save_results(args.out, results)
            print(f"results: {args.out}")
    elif args.command == "compare":
        from gfocal.compare import failed_arms, run_comparison
        failed = failed_arms(*run_comparison(args))
        if failed:
            print(f"gfocal compare: {' and '.join(failed)} failed (the report says why)",
                  file=sys.stderr)
            return 1
    return 0


def _job_started():
    """True once this process has joined a data-parallel job (torch.distributed or Jittor's
    MPI), whose other processes may be waiting for it."""
    return any(sys.modules[name].active() for name in
               ("gfocal.pytorch.distributed", "gfocal.jittor.distributed") if name in sys.modules)


def main(argv=None):
    configure_frameworks()
    args = build_parser().parse_args(argv)
    from gfocal.errors import USER_ERRORS
    where = process_label()  # which process of a data-parallel job this is, if any
    try:
        code = run(args)
    except USER_ERRORS as exc:
        sys.stdout.flush()  # what was printed before the error (test's statistics) comes first
        print(f"gfocal {args.command}{f' [{where}]' if where else ''}: error: {exc}",
              file=sys.stderr)
        code = 2
    except BaseException:
        if not _job_started():
            raise
        traceback.print_exc()
        code = 1
    if code and _job_started():
        # A failed process of a job leaves at once: a normal exit would finalise MPI (or the
        # process group) and wait there for the others, who wait for it in an all-reduce.
        # torchrun / mpirun see the exit and stop the others.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
