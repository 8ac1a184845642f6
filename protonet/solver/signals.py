"""SIGINT/SIGHUP as Caffe's SignalHandler, and SIGTERM as schedulers send it: a signal only sets a
flag; the solver asks between iterations (and between test batches) and acts: stop, snapshot, or
nothing. A second signal while a snapshot is written only sets the flag again: the files are
never cut short by one.

Effects as Caffe's --sigint_effect: `stop` ends training (with Caffe's snapshot_after_train
snapshot, default on), `snapshot` writes a snapshot and goes on, `none` ignores the signal.
Defaults: SIGINT stop, SIGHUP snapshot (Caffe's), SIGTERM stop (Slurm, Kubernetes and most
schedulers send it before killing a job: the progress is saved and the job ends at once).
Training stopped by a signal before max_iter ends with exit status 128 + the signal's number
(130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP), as a shell reports a process the signal ended.
"""
import signal

from protonet.errors import ProtonetError

# What a signal (or a caller) may ask of the solver between iterations.
NONE, STOP, SNAPSHOT = "none", "stop", "snapshot"

EFFECTS = (STOP, SNAPSHOT, NONE)


def parse_effect(value, flag):
    if value not in EFFECTS:
        raise ProtonetError(f"--{flag}: invalid signal effect '{value}' (stop, snapshot or none)")
    return value


def stop_status(signum):
    """The exit status of a run a signal stopped before max_iter."""
    return 128 + int(signum)


class SignalHandler:
    """Install with `with SignalHandler(sigint_effect, sighup_effect, sigterm_effect) as h:`; pass
    `h.check` to the solver as its action. The previous handlers come back on exit.
    `h.stop_signal`: the signal whose effect stopped training (None if none did)."""

    def __init__(self, sigint_effect=STOP, sighup_effect=SNAPSHOT, sigterm_effect=STOP):
        self.effects = {signal.SIGINT: parse_effect(sigint_effect, "sigint_effect"),
                        signal.SIGHUP: parse_effect(sighup_effect, "sighup_effect"),
                        signal.SIGTERM: parse_effect(sigterm_effect, "sigterm_effect")}
        self._got = dict.fromkeys(self.effects, False)
        self._previous = {}
        self.stop_signal = None

    def _handle(self, signum, frame):
        self._got[signum] = True

    def __enter__(self):
        for signum in self.effects:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}
        return False

    def check(self):
        """The requested action since the last call: SIGTERM first (the job is about to be
        killed), then SIGHUP (Caffe checks it before SIGINT), then SIGINT."""
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            if self._got[signum]:
                self._got[signum] = False
                effect = self.effects[signum]
                if effect == NONE:
                    continue
                if effect == STOP and self.stop_signal is None:
                    self.stop_signal = signum
                return effect
        return NONE
