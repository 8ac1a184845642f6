"""NetParameter -> torch.nn.Module. See protonet/net/net.py for the Net API."""
from protonet.net.net import Net  # noqa: F401
