"""Log lines in glog's shape, so Caffe's parse_log.py, extract_seconds.py and plot scripts read them.

A line looks like `I1122 03:53:12.386420 17432 solver.py:243] Iteration 20, loss = 0.0811569`:
severity letter, month and day, time with microseconds, process id, source file:line, message.
"""
import logging
import math
import sys
import time

LOGGER_NAME = "protonet"

_LETTERS = {logging.DEBUG: "I", logging.INFO: "I", logging.WARNING: "W", logging.ERROR: "E", logging.CRITICAL: "F"}


def get_logger(name="solver"):
    return logging.getLogger(f"{LOGGER_NAME}.{name}")


def format_float(value):
    """A number as C++ iostreams print a float by default (6 significant digits, like %g)."""
    value = float(value)
    if math.isnan(value):
        return "-nan" if math.copysign(1.0, value) < 0 else "nan"
    if math.isinf(value):
        return "-inf" if value < 0 else "inf"
    return f"{value:.6g}"


class GlogFormatter(logging.Formatter):
    def format(self, record):
        t = time.localtime(record.created)
        micros = int((record.created - int(record.created)) * 1e6)
        head = (f"{_LETTERS.get(record.levelno, 'I')}{t.tm_mon:02d}{t.tm_mday:02d} "
                f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{micros:06d} "
                f"{record.process} {record.filename}:{record.lineno}] ")
        msg = record.getMessage()
        if record.exc_info:
            msg = msg + "\n" + self.formatException(record.exc_info)
        return head + msg


def install_handler(stream=None, path=None, level=logging.INFO):
    """Send protonet's log to `stream` (stderr by default) and, if given, append it to file `path`.

    Returns the handlers so that a caller (a test) can remove them again.
    """
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(level)
    handlers = []
    h = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handlers.append(h)
    if path:
        handlers.append(logging.FileHandler(path))
    for h in handlers:
        h.setFormatter(GlogFormatter())
        logger.addHandler(h)
    logger.propagate = False
    return handlers


def remove_handlers(handlers):
    logger = logging.getLogger(LOGGER_NAME)
    for h in handlers:
        logger.removeHandler(h)
        h.close()
