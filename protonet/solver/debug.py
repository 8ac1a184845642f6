"""`debug_info: true`: Caffe's per-blob mean absolute data/diff lines on display iterations.

Lines keep Caffe's shapes: `    [Forward] Layer L, top blob B data: X`, `    [Forward] Layer L, param blob P
data: X`, `    [Backward] Layer L, bottom blob B diff: X`, `    [Backward] Layer L, param blob P diff: X`
and the error-level `    [Backward] All net params (data, diff): L1 norm = (a, b); L2 norm = (c, d)`.
Backward lines come in autograd's order, which follows the layers in reverse as Caffe's does.
"""
import math

import torch

from protonet.solver.logger import format_float


def _mean_abs(t):
    return format_float(t.detach().float().abs().sum().item() / max(t.numel(), 1))


class DebugInfo:
    """Hooks a net for one forward/backward pass; `remove()` takes the hooks off again."""

    def __init__(self, net, log):
        self.net = net
        self.log = log
        self.handles = []
        for lparam, (name, layer) in zip(net.net_param.layer, net.layers.items()):
            self.handles.append(layer.register_forward_hook(self._forward_hook(name, list(lparam.top),
                                                                                list(lparam.bottom),
                                                                                list(lparam.param))))

    def _forward_hook(self, name, tops, bottoms, specs):
        def hook(module, args, out):
            outs = (out,) if isinstance(out, torch.Tensor) else tuple(out or ())
            for top, t in zip(tops, outs):
                if isinstance(t, torch.Tensor) and t.is_floating_point():
                    self.log.info("    [Forward] Layer %s, top blob %s data: %s", name, top, _mean_abs(t))
            for i, blob in enumerate(module.blobs):
                display = specs[i].name if i < len(specs) and specs[i].name else str(i)
                self.log.info("    [Forward] Layer %s, param blob %s data: %s", name, display, _mean_abs(blob))
            for bottom, x in zip(bottoms, args):
                if isinstance(x, torch.Tensor) and x.requires_grad:
                    x.register_hook(self._backward_hook(name, bottom, module))
        return hook

    def _backward_hook(self, name, bottom, module):
        def hook(grad):
            self.log.info("    [Backward] Layer %s, bottom blob %s diff: %s", name, bottom, _mean_abs(grad))
        return hook

    def after_backward(self):
        """Param diffs per layer (last layer first) and the all-params norms line."""
        for name, layer in reversed(list(self.net.layers.items())):
            for i, blob in enumerate(layer.blobs):
                if blob.requires_grad and blob.grad is not None:
                    self.log.info("    [Backward] Layer %s, param blob %d diff: %s", name, i, _mean_abs(blob.grad))
        asum_data = asum_diff = sumsq_data = sumsq_diff = 0.0
        for blob, _, _ in self.net.learnable_params:
            d = blob.detach().float()
            asum_data += d.abs().sum().item()
            sumsq_data += (d * d).sum().item()
            if blob.grad is not None:
                g = blob.grad.detach().float()
                asum_diff += g.abs().sum().item()
                sumsq_diff += (g * g).sum().item()
        self.log.error("    [Backward] All net params (data, diff): L1 norm = (%s, %s); L2 norm = (%s, %s)",
                       format_float(asum_data), format_float(asum_diff), format_float(math.sqrt(sumsq_data)),
                       format_float(math.sqrt(sumsq_diff)))

    def remove(self):
        for h in self.handles:
            h.remove()
        self.handles = []
