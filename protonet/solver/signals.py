"""SIGINT/SIGHUP as Caffe's SignalHandler: a signal only sets a flag; the solver asks between
iterations (and between test batches) and acts: stop, snapshot, or nothing."""
import signal

from protonet.errors import ProtonetError

# What a signal (or a caller) may ask of the solver between iterations.
NONE, STOP, SNAPSHOT = "none", "stop", "snapshot"

EFFECTS = (STOP, SNAPSHOT, NONE)


def parse_effect(value, flag):
    if value not in EFFECTS:
        raise ProtonetError(f"--{flag}: invalid signal effect '{value}' (stop, snapshot or none)")
    return value


class SignalHandler:
    """Install with `with SignalHandler(sigint_effect, sighup_effect) as h:`; pass `h.check` to the
    solver as its action. The previous handlers come back on exit."""

    def __init__(self, sigint_effect=STOP, sighup_effect=SNAPSHOT):
        self.effects = {signal.SIGINT: parse_effect(sigint_effect, "sigint_effect"),
                        signal.SIGHUP: parse_effect(sighup_effect, "sighup_effect")}
        self._got = {signal.SIGINT: False, signal.SIGHUP: False}
        self._previous = {}

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
        """The requested action since the last call (SIGHUP first, as Caffe checks it first)."""
        for signum in (signal.SIGHUP, signal.SIGINT):
            if self._got[signum]:
                self._got[signum] = False
                return self.effects[signum]
        return NONE
