"""The forward probes GFocalV2 shares with GFL V1 (backbone, neck, towers, reg logits): our
PyTorch port in V2 against mmdetection 3.x's GFL (parity_tests/subjects/mmdet_gfl.py) from
the same seeded weights, on the parity suite's cases in eval and train mode; per probe the
largest relative error (parity_tests/judge.py error_stats) over the runs. The parity suite
itself judges mmdetection in V1 (`pytest parity_tests --subject
parity_tests.subjects.mmdet_gfl:subject`); a session has one head, so this V2 check lives
here. Runs in the mmdet environment's python (`bash scripts/mmdet_env.sh` prints it;
tests/test_mmdet_subject.py runs this).

    python scripts/mmdet_compare.py [--cases a,b] [--json PATH]
    --cases a,b   some of parity_tests/cases.py CASES (default: all)
    --json PATH   also write {probe: {"rel": max relative error, "note": ...}}
"""
import argparse
import json
import re
import sys

# the forward probes GFocalV2 and GFL V1 have in common (V2 has DGQP after the reg logits)
SHARED_FORWARD = re.compile(r"^(backbone\.|neck\.|head\.(cls_tower|reg_tower|reg_logits)\.)")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="")
    parser.add_argument("--json", default="")
    return parser.parse_args(argv)


def build():
    """(our PyTorch port in V2 as a subject, the mmdet subject), both with the port's seeded
    V2 weights (mmdet's V1 model without the reg_conf weights only V2 has)."""
    from parity_tests.cases import seeded_state, small_config
    from parity_tests.port_subject import PortSubject
    from parity_tests.subjects.mmdet_gfl import subject
    cfg = small_config()["model"]
    state = seeded_state(cfg)
    ours = PortSubject("torch")
    ours.build(cfg, state)
    mmdet = subject()
    mmdet.build(cfg, {k: v for k, v in state.items() if not k.startswith("bbox_head.reg_conf.")})
    return ours, mmdet


def worst_errors(ours, mmdet, cases):
    """{shared probe: {"rel": largest relative error over the runs, "note": ...}}."""
    from parity_tests import judge
    from parity_tests.cases import make_case
    names = [n for n in judge.forward_probes("gfl_v2") if SHARED_FORWARD.match(n)]
    worst = {name: {"rel": 0.0, "note": ""} for name in names}
    for case in cases:
        batch = make_case(case)
        for mode in ("eval", "train"):
            ref, got = ours.run(batch, mode)["probes"], mmdet.run(batch, mode)["probes"]
            for row in judge.compare_all(names, got, ref):
                entry = worst[row.name]
                entry["rel"] = max(entry["rel"], row.rel)
                entry["note"] = entry["note"] or row.note
    return worst


def main(argv=None):
    from gfocal.atomic import atomic_path, check_output_file
    from gfocal.errors import USER_ERRORS
    from parity_tests.cases import CASES
    from parity_tests.subject import SubjectError
    args = parse_args(argv)
    cases = [c for c in args.cases.split(",") if c] or list(CASES)
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        sys.exit(f"mmdet_compare: unknown case {', '.join(unknown)} (known: {', '.join(CASES)})")
    try:
        if args.json:
            check_output_file(args.json)  # before the minute of runs
        worst = worst_errors(*build(), cases)
        print(f"{'probe':24} {'max rel err':>12}  note")
        for name, entry in worst.items():
            print(f"{name:24} {entry['rel']:12.2e}  {entry['note']}")
        if args.json:
            with atomic_path(args.json) as tmp, open(tmp, "w") as f:
                json.dump(worst, f, indent=1)
    except (SubjectError, *USER_ERRORS) as exc:
        sys.exit(f"mmdet_compare: error: {exc}")


if __name__ == "__main__":
    main()
