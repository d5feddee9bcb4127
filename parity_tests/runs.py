"""The parity runner: one reference and any number of subjects (parity_tests/subject.py),
built from the same canonical weights, each (case, mode) run once and cached, plus the
reference's float64 run (the live noise of every tolerance, parity_tests/judge.py).

    runs = ParityRuns(model_cfg, state, reference, {"jittor": subject})
    run = runs.get("random_b1", "train")
    run["reference"]["probes"], run["jittor"]["losses"], run["noise"]
    runs.first_divergence("jittor", "random_b1", "train")  # the first probe beyond tolerance
"""
import numpy as np

from parity_tests import judge, kinks
from parity_tests.cases import as_float64, make_case
from parity_tests.subject import NotOffered, offers


class ParityRuns:
    """Runs every (case, mode) once per subject and once for the reference in float32 (or
    the mixed precision `amp`), plus the reference's float64 run (train mode: its numbers
    serve both modes, BN being frozen and GN per sample)."""

    def __init__(self, model_cfg, state, reference, subjects, amp="off"):
        if not offers(reference, "float64"):
            raise NotOffered(f"reference {reference.name} does not run in float64 (the live "
                             f"noise of the tolerances needs it)")
        self.cfg, self.state, self.amp = model_cfg, state, amp
        self.reference, self.subjects = reference, dict(subjects)
        for subject in (reference, *self.subjects.values()):
            subject.build(model_cfg, state)
        self.batches, self._runs = {}, {}
        self.float64_error = None

    def batch(self, case):
        if case not in self.batches:
            self.batches[case] = make_case(case, self.cfg["num_classes"])
        return self.batches[case]

    def _run(self, subject, batch, mode, gradients, **options):
        wanted = "gradients" if gradients else "probes"
        if not offers(subject, wanted) and not offers(subject, "losses"):
            return None
        if self.amp != "off":
            if not offers(subject, "amp"):
                return None
            options["amp"] = self.amp
        return subject.run(batch, mode, gradients and offers(subject, "gradients"), **options)

    def get(self, case, mode):
        key = (case, mode)
        if key not in self._runs:
            batch = self.batch(case)
            grads = mode == "train"
            train = None if grads else self.get(case, "train")
            run = {"reference": self._run(self.reference, batch, mode, grads)}
            for name, subject in self.subjects.items():
                run[name] = self._run(subject, batch, mode, grads)
            if grads:
                run["float64"], run["noise"] = self.float64_reference(batch, run["reference"])
                run["kinks"] = {name: self.kink_resolved(batch, run, name)
                                for name in self.subjects}
                for part in run.values():  # every ReLU input is kept only as long as needed
                    if isinstance(part, dict):
                        part.pop("relu_inputs", None)
            else:
                run["float64"], run["noise"] = train["float64"], train["noise"]
            self._runs[key] = run
        return self._runs[key]

    def kink_resolved(self, batch, run, subject):
        """Where the subject takes the other side of a ReLU kink than the reference
        (parity_tests/kinks.py): the rows holding those ReLU inputs to the forward tolerance
        and the reference's float32 run, with its float64 noise, recomputed on the subject's
        side of each kink; None where there is none (or the subject reports no ReLU inputs)."""
        theirs = (run[subject] or {}).get("relu_inputs")
        ours = run["reference"].get("relu_inputs")
        if not theirs or not ours:
            return None
        found = kinks.kinks(ours, theirs)
        if not found:
            return None
        rows = kinks.rows(found, ours, theirs, run["float64"].get("relu_inputs") or ours)
        masks = kinks.masks(theirs, found)
        resolved = self.reference.run(batch, "train", True, relu_masks=masks,
                                      **({"amp": self.amp} if self.amp != "off" else {}))
        _, noise = self.float64_reference(batch, resolved, masks)
        return {"rows": rows, "reference": resolved, "noise": noise}

    def float64_reference(self, batch, run32, relu_masks=None):
        """The reference in float64 (train mode, with gradients) and the float32-vs-float64
        noise per probe, loss and gradient."""
        try:
            run64 = self.reference.run(as_float64(batch), "train", True, relu_masks=relu_masks,
                                       float64=True)
        except Exception as exc:  # a model that cannot run in float64: forward noise only
            self.float64_error = f"{type(exc).__name__}: {exc}"
            probes = self.reference.forward_probes(batch["imgs"].astype(np.float64),
                                                   float64=True)
            run64 = {"probes": probes, "losses": {}, "grads": {}}
        return run64, judge.noise_of(run32, run64)

    def compared_rows(self, subject, case, mode):
        """Every probe the reference recorded, in its order, compared with the subject's."""
        run = self.get(case, mode)
        order = list(run["reference"]["probes"])
        return judge.compare_all(order, run[subject]["probes"], run["reference"]["probes"],
                                 run["noise"])

    def first_divergence(self, subject, case, mode):
        """The first row (forward order) beyond its tolerance, or None."""
        rows = self.compared_rows(subject, case, mode)
        index = judge.first_failure(rows)
        return None if index is None else rows[index]
