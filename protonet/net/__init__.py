"""NetParameter -> torch.nn.Module. See protonet/net/net.py for the Net API."""


def __getattr__(name):
    if name == "Net":
        from protonet.net.net import Net

        return Net
    raise AttributeError(name)
