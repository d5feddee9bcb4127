"""How far apart the two ports are in each mixed precision: one forward and loss of the parity
suite's small model (same weights, same batch, train mode), PyTorch port against Jittor port.

The parity suite holds the policy (bf16, fp16) to its tolerances; native mode (each
framework's own AMP) is not held to them, and this measures by how much it differs instead
(docs/MODEL.md section 13). Prints a markdown table: per precision the probes' relative
errors (max and median, as parity_tests/judge.py reads them) and the losses' relative
differences.

    python scripts/precision_cross.py [--amp off,bf16,native-bf16,native-fp16] [--case coco_b2]
"""
import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gfocal.ports import FRAMEWORKS, load_port  # noqa: E402
from gfocal.precision import PrecisionError, amp_list  # noqa: E402
from gfocal.tables import markdown_table  # noqa: E402
from parity_tests.cases import CASES, make_case, seeded_state, small_config  # noqa: E402
from parity_tests.judge import error_stats  # noqa: E402

LOSSES = ("loss_cls", "loss_bbox", "loss_dfl")


def run(port, model, amp, batch):
    """(losses as floats, probes) of one forward and loss in precision `amp`."""
    with port.precision.mixed_precision(amp), port.probes.capture() as probes:
        losses = model.loss(batch)
    return {k: port.numpy(v).reshape(-1)[0].item() for k, v in losses.items()}, dict(probes)


def row(amp, torch_out, jittor_out):
    (loss_t, probes_t), (loss_j, probes_j) = torch_out, jittor_out
    errors = {name: error_stats(name, probes_j[name], probes_t[name]).rel
              for name in probes_t if name in probes_j and probes_t[name].size
              and probes_t[name].dtype.kind == "f"}
    worst = max(errors, key=errors.get)
    return [amp, len(errors), f"{errors[worst]:.3g} ({worst})",
            f"{statistics.median(errors.values()):.3g}",
            *(f"{abs(loss_j[k] - loss_t[k]) / abs(loss_t[k]):.2g}" for k in LOSSES)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--amp", default="off,bf16,native-bf16,native-fp16")
    parser.add_argument("--case", default="coco_b2", choices=sorted(CASES))
    args = parser.parse_args(argv)
    try:
        amps = amp_list(args.amp)
    except PrecisionError as exc:
        parser.exit(2, f"precision_cross: error: {exc}\n")
    cfg = small_config()
    state, batch = seeded_state(cfg["model"]), make_case(args.case)
    ports = [load_port(fw) for fw in FRAMEWORKS]
    models = []
    for port in ports:
        model = port.build_detector(cfg["model"])
        port.checkpoint.load_state_dict_numpy(model, state)
        model.train()
        models.append(model)
    rows = [row(amp, *(run(p, m, amp, batch) for p, m in zip(ports, models))) for amp in amps]
    print(markdown_table(["--amp", "probes", "max rel. error (probe)", "median",
                          *(f"{k} rel. diff." for k in LOSSES)], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
