"""`train --tensorboard DIR`: the numbers of Caffe's log as TensorBoard scalars, written with
torch.utils.tensorboard (the `tensorboard` package is an optional extra): every train net output
and the smoothed loss (train/...), the learning rate, images/s and the data-wait share (speed/...)
at each display, and every test net output, such as mAP (test/... or testN/... with several test
nets), after each test pass. The step is the iteration."""
from protonet.errors import ProtonetError


class ScalarLog:
    def __init__(self, log_dir):
        try:
            # optional extra: the tensorboard package (torch.utils.tensorboard needs it)
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ProtonetError("--tensorboard needs the tensorboard package: pip install tensorboard "
                                "(or protonet[tensorboard])") from None
        self.writer = SummaryWriter(log_dir)

    def add(self, tag, value, step):
        self.writer.add_scalar(tag, float(value), step)

    def outputs(self, prefix, outputs, step):
        """{name: [values]} (one scalar per value) or {name: (mAP, per-class APs)} (the mAP)."""
        for name, value in outputs.items():
            if isinstance(value, tuple):
                self.add(f"{prefix}/{name}", value[0], step)
                continue
            for k, v in enumerate(value):
                self.add(f"{prefix}/{name}" + (f"/{k}" if len(value) > 1 else ""), v, step)

    def close(self):
        self.writer.close()
