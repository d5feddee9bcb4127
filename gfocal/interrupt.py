"""SIGTERM and SIGINT during training: save the progress, say so, exit non-zero.

A scheduler sends SIGTERM some time before it kills a job, and Ctrl-C is SIGINT. The first
of them is only noted: the training loop ends its current step, writes `latest` (an atomic
write) and raises TrainingInterrupted. A second one stops at once, abandoning a step or a
save in progress (the atomic write leaves the previous `latest` as it was).
"""
import contextlib
import signal
import threading

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingInterrupted(SystemExit):
    """Training stopped by a signal. A SystemExit with the shell's status for it (128 + the
    signal's number: 143 for SIGTERM, 130 for SIGINT), so that a caller catching Exception
    (a comparison going on to its next arm) does not carry on past it."""

    def __init__(self, signum):
        super().__init__(128 + signum)
        self.signum = signum

    @property
    def signal_name(self):
        return signal.Signals(self.signum).name


class StopRequest:
    """The first stop signal received while `handling()` (None if none yet)."""

    def __init__(self):
        self.signum = None

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise TrainingInterrupted(signum)
        self.signum = signum

    def interrupted(self):
        return TrainingInterrupted(self.signum)

    @contextlib.contextmanager
    def handling(self, enabled=True):
        """Catch SIGTERM / SIGINT in this block (only in the main thread, where Python runs
        handlers, and only if `enabled`); the previous handlers are back after it."""
        if not enabled or threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
        try:
            for signum in STOP_SIGNALS:
                signal.signal(signum, self._handle)
            yield self
        finally:
            for signum, handler in previous.items():
                # None: a handler installed outside Python, which cannot be put back
                signal.signal(signum, signal.SIG_DFL if handler is None else handler)
