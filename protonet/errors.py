"""Errors a user can cause. The CLI prints them as one line and exits 2."""


class ProtonetError(Exception):
    """A user-facing error: bad file, unknown layer, shape mismatch, missing path.

    The message must name the place (file:line:col, layer name, blob, record key).
    """


class PrototxtError(ProtonetError):
    """A text proto that does not parse: the message is `FILE:LINE:COL: what is wrong`."""


class ShapeError(ProtonetError):
    """A blob or bottom shape that does not fit; names the layer and blob."""


class PriorCountError(ShapeError):
    """Detection heads that predict another number of boxes than the priors give (a fork with its
    own prior tiling, e.g. FaceBoxes', read with the SSD fork's)."""
