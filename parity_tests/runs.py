"""The parity runner: one reference and any number of subjects (parity_tests/subject.py),
built from the same canonical weights, each (case, mode) run once and cached, plus the
reference's float64 run (the live noise of every tolerance, parity_tests/judge.py).

    runs = ParityRuns(model_cfg, state, reference, {"jittor": subject})
    run = runs.get("random_b1", "train")
    run["reference"]["probes"], run["jittor"]["losses"], run["noise"]
    runs.first_divergence("jittor", "random_b1", "train")  # the first probe beyond tolerance
    runs.against("jittor", "random_b1", "train")  # the reference resolved at ties and kinks
"""
import numpy as np

from parity_tests import judge, kinks, ties
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
            else:
                run["float64"], run["noise"] = train["float64"], train["noise"]
            run["ties"] = {name: self.tie_resolved(batch, run, name, mode, train)
                           for name in self.subjects}
            if grads:
                run["kinks"] = {name: self.kink_resolved(batch, run, name)
                                for name in self.subjects}
                for part in self._parts(run):  # every ReLU input is kept only as long as needed
                    part.pop("relu_inputs", None)
            self._runs[key] = run
        return self._runs[key]

    @staticmethod
    def _parts(run):
        """Every run dict of `run`, the tie-resolved references included."""
        parts = [part for part in run.values() if isinstance(part, dict)]
        parts += [tie["reference"] for tie in run.get("ties", {}).values()
                  if tie and "reference" in tie]
        return parts

    def _options(self):
        return {"amp": self.amp} if self.amp != "off" else {}

    def tie_resolved(self, batch, run, subject, mode, train=None):
        """Where the subject's ATSS assignment differs from the reference's (probe
        targets.assigned_gt_inds), parity_tests/ties.py's verdict: {"check": TieCheck} and,
        where every difference is a tie, "assigned" (the subject's, per image), "rows" (the
        verdict's tie row) and the reference's run ("reference") with its float64 noise
        ("noise") recomputed taking that assignment (eval mode: the train run's noise);
        None where the assignments agree or the subject does not record its own."""
        ours = run["reference"]["probes"].get("targets.assigned_gt_inds")
        theirs = ((run[subject] or {}).get("probes") or {}).get("targets.assigned_gt_inds")
        if ours is None or theirs is None or np.shape(ours) != np.shape(theirs) \
                or np.array_equal(ours, theirs):
            return None
        found = ties.check_batch(ours, theirs, self.featmap_sizes(run), self.cfg["strides"],
                                 self.cfg["octave_base_scale"],
                                 [meta["pad_shape"] for meta in batch["img_metas"]],
                                 batch["gt_bboxes"], self.cfg["atss_topk"])
        if found.real:
            return {"check": found}
        assigned = [np.asarray(inds) for inds in theirs]
        resolved = self.reference.run(batch, mode, mode == "train", assigned_gt_inds=assigned,
                                      **self._options())
        trained = (train or {}).get("ties", {}).get(subject)
        if train is None:
            _, noise = self.float64_reference(batch, resolved, assigned_gt_inds=assigned)
        else:
            noise = trained["noise"] if trained and "noise" in trained else train["noise"]
        return {"check": found, "assigned": assigned, "rows": [ties.tie_row(found)],
                "reference": resolved, "noise": noise}

    def featmap_sizes(self, run):
        """The pyramid levels' (H, W), from the reference's neck probes."""
        probes = run["reference"]["probes"]
        return [tuple(probes[f"neck.p{lvl + 3}"].shape[2:])
                for lvl in range(len(self.cfg["strides"]))]

    def kink_resolved(self, batch, run, subject):
        """Where the subject takes the other side of a ReLU kink than the reference
        (parity_tests/kinks.py): the rows holding those ReLU inputs to the forward tolerance
        and the reference's float32 run, with its float64 noise, recomputed on the subject's
        side of each kink (and with its ATSS assignment where it differs only at ties);
        None where there is none (or the subject reports no ReLU inputs)."""
        theirs = (run[subject] or {}).get("relu_inputs")
        ours = run["reference"].get("relu_inputs")
        if not theirs or not ours:
            return None
        found = kinks.kinks(ours, theirs)
        if not found:
            return None
        rows = kinks.rows(found, ours, theirs, run["float64"].get("relu_inputs") or ours)
        masks = kinks.masks(theirs, found)
        assigned = (run["ties"].get(subject) or {}).get("assigned")
        resolved = self.reference.run(batch, "train", True, relu_masks=masks,
                                      **self._options(),
                                      **({"assigned_gt_inds": assigned} if assigned else {}))
        _, noise = self.float64_reference(batch, resolved, masks, assigned_gt_inds=assigned)
        return {"rows": rows, "reference": resolved, "noise": noise}

    def against(self, subject, case, mode, gradients=False):
        """What `subject`'s run of (case, mode) is compared with: {"reference": run,
        "noise": per name, "rows": rows to show first, "check": the TieCheck or None}: the
        reference resolved at the subject's ATSS ties (the rows: the tie row, counted once
        per case and mode in the verdict) and, for `gradients`, at its ReLU kinks too (the
        rows: the kinks' ReLU inputs)."""
        run = self.get(case, mode)
        tie = run["ties"].get(subject) or {}
        out = {"reference": tie.get("reference", run["reference"]),
               "noise": tie.get("noise", run["noise"]),
               "rows": [] if gradients else list(tie.get("rows", [])),
               "check": tie.get("check")}
        kink = run.get("kinks", {}).get(subject) if gradients else None
        if kink:
            out.update(reference=kink["reference"], noise=kink["noise"], rows=kink["rows"])
        return out

    def rows(self, subject, case, mode, names, part="probes", gradients=False):
        """judge rows of `names` (of the runs' `part`: probes, losses or grads, the latter
        named grad.NAME), subject against the resolved reference (`against`); where the
        assignments differ beyond ties, the failing assignment rows say where."""
        against = self.against(subject, case, mode, gradients)
        prefix = "grad." if part == "grads" else ""
        got = {prefix + n: v for n, v in self.get(case, mode)[subject][part].items()}
        ref = {prefix + n: v for n, v in against["reference"][part].items()}
        rows = judge.compare_all(names, got, ref, against["noise"], amp=self.amp)
        check = against["check"]
        if check is not None and check.real:
            for row in rows:
                if row.name in judge.EXACT_PROBES and not row.ok:
                    row.note = "; ".join(filter(None, [row.note, ties.real_note(check)]))
        return rows

    def float64_reference(self, batch, run32, relu_masks=None, assigned_gt_inds=None):
        """The reference in float64 (train mode, with gradients) and the float32-vs-float64
        noise per probe, loss and gradient."""
        options = {"assigned_gt_inds": assigned_gt_inds} if assigned_gt_inds else {}
        try:
            run64 = self.reference.run(as_float64(batch), "train", True, relu_masks=relu_masks,
                                       float64=True, **options)
        except Exception as exc:  # a model that cannot run in float64: forward noise only
            self.float64_error = f"{type(exc).__name__}: {exc}"
            probes = self.reference.forward_probes(batch["imgs"].astype(np.float64),
                                                   float64=True)
            run64 = {"probes": probes, "losses": {}, "grads": {}}
        return run64, judge.noise_of(run32, run64)

    def compared_rows(self, subject, case, mode):
        """Every probe the reference recorded, in its order, compared with the subject's
        (at its ATSS ties, with the reference taking its side: the tie row first)."""
        order = list(self.get(case, mode)["reference"]["probes"])
        return (self.against(subject, case, mode)["rows"]
                + self.rows(subject, case, mode, order))

    def first_divergence(self, subject, case, mode):
        """The first row (forward order) beyond its tolerance, or None."""
        rows = self.compared_rows(subject, case, mode)
        index = judge.first_failure(rows)
        return None if index is None else rows[index]
