"""What a long run shows beside Caffe's log lines: the progress of a test pass (a bar on a terminal,
otherwise a log line every few batches), and after each training display the speed in images/s,
the share of time spent waiting for the data layers, and the time left to max_iter.

The lines keep clear of the words Caffe's tools/extra/parse_log.py looks for ("Iteration N",
"lr =", "net output #"), so a log still parses as Caffe's."""
import sys
import time


def duration(seconds):
    """'1:02:03' for an hour and more, else '2:03'."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def track(steps, total, label, log, interactive=False, stream=None):
    """Yield from `steps`, showing progress: a bar redrawn on `stream` (stderr) when `interactive`,
    else `log(line)` every tenth of the way (at most every 100 steps) and at the end."""
    stream = stream or sys.stderr
    every = max(1, min(100, total // 10))
    start = time.perf_counter()
    done = 0
    for done, step in enumerate(steps, 1):
        yield step
        elapsed = time.perf_counter() - start
        rate = done / elapsed if elapsed > 0 else 0.0
        left = f", {duration((total - done) / rate)} left" if rate and done < total else ""
        text = f"{label}: batch {done}/{total}, {rate:.3g} batches/s{left}"
        if interactive:
            filled = int(30 * done / max(total, 1))
            stream.write(f"\r{label} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total} {rate:.3g}/s{left}\x1b[K")
            stream.flush()
        elif done % every == 0 or done == total:
            log(text)
    if interactive and done:
        stream.write("\n")
        stream.flush()


class TrainingClock:
    """Times training between display lines: images/s, data-wait share, time left to max_iter.
    Test passes are timed apart: their time counts into what is left, not into the speed."""

    def __init__(self, net, images_per_iter, max_iter, test_interval=0):
        self.data_layers = [layer for layer in net.layers.values() if layer.is_data]
        self.images_per_iter = images_per_iter
        self.max_iter = max_iter
        self.test_interval = test_interval
        self.test_seconds = None     # the last test pass
        self.restart(0)

    def _waited(self):
        return sum(getattr(layer, "wait_seconds", 0.0) for layer in self.data_layers)

    def restart(self, it):
        self.iter, self.start, self.excluded, self.wait0 = it, time.perf_counter(), 0.0, self._waited()

    def tested(self, seconds):
        """A test pass took `seconds` of this interval."""
        self.excluded += seconds
        self.test_seconds = seconds

    def report(self, it):
        """(the line, {name: value}) for iterations self.iter .. it - 1; restarts the interval."""
        n = it - self.iter
        seconds = max(time.perf_counter() - self.start - self.excluded, 1e-9)
        per_iter = seconds / n
        values = {"iter_per_s": n / seconds}
        parts = [f"{values['iter_per_s']:.3g} iter/s"]
        if self.images_per_iter:
            values["images_per_s"] = n * self.images_per_iter / seconds
            parts.append(f"{values['images_per_s']:.4g} images/s")
        if self.data_layers:
            values["data_wait"] = min(1.0, (self._waited() - self.wait0) / seconds)
            parts.append(f"data wait {100 * values['data_wait']:.0f}%")
        left = (self.max_iter - it) * per_iter
        if self.test_interval and self.test_seconds is not None:
            left += (self.max_iter // self.test_interval - it // self.test_interval) * self.test_seconds
        values["seconds_left"] = left
        parts.append(f"ETA {duration(left)} to max_iter {self.max_iter}")
        self.restart(it)
        return f"Speed: {', '.join(parts)} (iterations {it - n} to {it - 1})", values
