"""What the control arm's verdict can detect: bugs of graded size planted in the Jittor arm.

One initialisation; the PyTorch run, the control arm (PyTorch again, one ulp away) and the
Jittor port unplanted once each; then the Jittor arm again with each planted bug, every one
read against the same PyTorch run and control by gfocal.control_arm.verdict. The smallest
bug of each kind that comes out "outside" is that kind's detection limit, written to
gfocal/verdict_power.json (the comparison report quotes it next to its verdict) and as a
table to OUT/verdict_power.md.

  python scripts/verdict_power.py [--config configs/gfl_r18_mini.py] [--epochs E]
                                  [--out reports/verdict_power] [--plants lr*1.02,...]

The plants (Jittor arm only, each one line of the port changed in this process):
  lr*K        every learning rate set by the schedule times K
  dfl*K       the DFL loss weight times K (QFL: qfl*K, GIoU: giou*K)
  bn_eps=E    the frozen BatchNorm's eps (1e-5) set to E
"""
import argparse
import contextlib
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from gfocal import control_arm  # noqa: E402
from gfocal.errors import USER_ERRORS  # noqa: E402
from gfocal.tables import markdown_table  # noqa: E402

# the graded ladder, up to sizes that must come out outside (a 3x learning rate: the
# planted-bug test of tests/test_control_arm.py), so that the limit lies inside it
DEFAULT_PLANTS = ("lr*1.02", "lr*1.05", "lr*1.1", "lr*1.3", "lr*2", "lr*3", "dfl*0.9",
                  "dfl*0.5", "qfl*0.9", "qfl*0.5", "bn_eps=0.001")
LOSS_WEIGHTS = {"dfl": "loss_dfl_weight", "qfl": "loss_cls_weight",
                "giou": "loss_bbox_weight"}


class PowerError(Exception):
    """A bad --plants entry, or an arm that failed: one line, exit 2."""


def parse_plant(text):
    """'lr*1.05' -> ('lr', 1.05); 'bn_eps=0.001' -> ('bn_eps', 0.001)."""
    kind, sep, value = text.replace("=", "*").partition("*")
    try:
        number = float(value)
    except ValueError:
        number = None
    if not sep or number is None or kind not in ("lr", "bn_eps", *LOSS_WEIGHTS):
        raise PowerError(f"--plants: {text!r} is not lr*K, dfl*K, qfl*K, giou*K or bn_eps=E")
    return kind, number


@contextlib.contextmanager
def planted(text):
    """The Jittor port with one bug, for the duration of the block."""
    from gfocal.ports import load_port
    port = load_port("jittor")
    kind, value = parse_plant(text)
    if kind == "lr":
        owner, name = port.train, "set_lr"
        real = port.train.set_lr
        replacement = lambda optimizer, lr: real(optimizer, value * lr)  # noqa: E731
    elif kind == "bn_eps":
        owner, name = port.kernels.BatchNorm2d, "__init__"
        real = port.kernels.BatchNorm2d.__init__

        def replacement(self, *args, **kwargs):
            real(self, *args, **kwargs)
            self.eps = value
    else:
        owner, name = port.gfl_loss.GFLLoss, "__init__"
        real = port.gfl_loss.GFLLoss.__init__
        attribute = LOSS_WEIGHTS[kind]

        def replacement(self, model_cfg):
            real(self, model_cfg)
            setattr(self, attribute, value * getattr(self, attribute))
    setattr(owner, name, replacement)
    try:
        yield
    finally:
        setattr(owner, name, real)


def measure(cfg, out_dir, plants, log=print):
    """-> {"config", "epochs", "iterations", "rows": [{plant, ratio, within, line}]}."""
    from gfocal import engine
    from gfocal.compare import check_inputs, run_arms
    from gfocal.report import RunData, read_log
    iters_per_epoch = check_inputs(cfg)
    runs, result = run_arms(cfg, out_dir, iters_per_epoch, progress=False)
    failed = [name for name, run in (*runs.items(), ("control", result["control"]))
              if run.failure]
    if failed:
        raise PowerError(f"the unplanted arms failed ({', '.join(failed)}): see {out_dir}")
    rows = [row("none", result["verdict"])]
    log(f"none: {rows[-1]['line']}")
    init = os.path.join(out_dir, "init_weights.pkl")  # run_arms' Jittor initialisation
    for text in plants:
        with planted(text):  # training only: the verdict reads the losses
            out = engine.train(engine.TrainRun(cfg, "jittor", os.path.join(out_dir, text),
                                               init_weights=init, progress=False))
        jittor = RunData(framework="jittor", log=read_log(out.log))
        rows.append(row(text, control_arm.verdict(runs["torch"], jittor, result["control"])))
        log(f"{text}: {rows[-1]['line']}")
    return {"config": os.path.relpath(cfg["source"], ROOT) if os.path.isabs(cfg["source"])
            else cfg["source"], "epochs": cfg["optim"]["epochs"],
            "iterations": len(runs["torch"].log), "check": result["check"]["text"],
            "date": time.strftime("%Y-%m-%d"), "rows": rows}


def row(plant, verdict):
    return {"plant": plant, "ratio": verdict["ratio"], "within": verdict["within"],
            "line": verdict["line"]}


def limits(measured):
    """{kind: smallest planted size that came out outside, or None} (size: |K - 1| for
    factors, the eps itself for bn_eps)."""
    found = {}
    for r in measured["rows"][1:]:
        kind, value = parse_plant(r["plant"])
        size = value if kind == "bn_eps" else abs(value - 1)
        found.setdefault(kind, None)
        if r["within"] is False and (found[kind] is None or size < found[kind][0]):
            found[kind] = (size, r["plant"])
    return {kind: hit[1] if hit else None for kind, hit in found.items()}


def markdown(measured):
    head = (f"Planted in the Jittor arm, {measured['config']}, {measured['epochs']} epochs "
            f"({measured['iterations']} iterations), {measured['date']}; {measured['check']}.")
    table = markdown_table(["plant", "R", "verdict"], [
        [r["plant"], "n/a" if r["ratio"] is None else f"{r['ratio']:.3g}",
         {True: "within", False: "**outside**", None: "undecided"}[r["within"]]]
        for r in measured["rows"]])
    return head + "\n\n" + table + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.path.join(ROOT, "configs", "gfl_r18_mini.py"))
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--out", default=os.path.join(ROOT, "reports", "verdict_power"))
    parser.add_argument("--plants", default=",".join(DEFAULT_PLANTS))
    parser.add_argument("--result", default=control_arm.VERDICT_POWER, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        plants = [p for p in args.plants.split(",") if p]
        for text in plants:
            parse_plant(text)
        from gfocal.compare import comparison_config
        cfg = comparison_config(args.config, epochs=args.epochs)
        os.makedirs(args.out, exist_ok=True)
        measured = measure(cfg, os.path.abspath(args.out), plants)
    except (PowerError, *USER_ERRORS) as exc:
        print(f"verdict_power: error: {exc}", file=sys.stderr)
        return 2
    measured["limits"] = limits(measured)
    table = os.path.join(args.out, "verdict_power.md")
    with open(table, "w") as f:
        f.write(markdown(measured))
    from gfocal.atomic import write_text
    write_text(args.result, json.dumps(measured, indent=1) + "\n")
    print(f"table: {table}\nresult: {args.result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
