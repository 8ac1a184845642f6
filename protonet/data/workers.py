"""Child processes that end with their parent: data-loader workers (and data-parallel ranks).

A child asks the kernel for SIGKILL when its parent dies (Linux's PR_SET_PDEATHSIG), so a parent
killed with kill -9 leaves no worker behind; where that call does not exist, a thread watches the
parent's pid instead (ends within `poll` seconds).
"""
import ctypes
import os
import signal
import sys
import threading

_PR_SET_PDEATHSIG = 1


def _set_parent_death_signal(signum):
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the loaded C library (no ldconfig run from a child)
        return libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent_pid, poll):
    def watch():
        while os.getppid() == parent_pid:
            threading.Event().wait(poll)
        os._exit(1)

    threading.Thread(target=watch, name="protonet-parent-watch", daemon=True).start()


def die_with_parent(parent_pid, poll=0.2):
    """Call first thing in a child: end it when the process `parent_pid` (its parent) ends."""
    if not _set_parent_death_signal(signal.SIGKILL):
        _watch_parent(parent_pid, poll)
    if os.getppid() != parent_pid:  # the parent was gone before the call took effect
        os._exit(1)


def leave_signals_to_parent(parent_pid):
    """A worker leaves SIGINT, SIGHUP and SIGTERM to its parent: a terminal's Ctrl-C or a
    scheduler's SIGTERM reach every process of the job, and the parent decides (snapshot, stop).
    A SIGTERM the parent itself sends (multiprocessing's terminate at shutdown) still ends the
    worker: a thread waits for SIGTERM (blocked for the other threads) and reads who sent it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):  # no sender to read: SIGTERM keeps its default action
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

    def wait_for_parent_sigterm():
        while True:
            info = signal.sigwaitinfo({signal.SIGTERM})
            if info.si_pid == parent_pid or os.getppid() != parent_pid:
                os._exit(128 + signal.SIGTERM)

    threading.Thread(target=wait_for_parent_sigterm, name="protonet-sigterm", daemon=True).start()
