"""Layer families. Importing this package registers every type."""
import importlib

from protonet.layers.base import LAYERS, Layer, NetContext, layer_class, register  # noqa: F401

# Each family module registers its types; a family that is not written yet is skipped.
for _family in ("common", "vision", "neuron", "normalization", "loss", "detection", "data", "hdf5", "python"):
    try:
        importlib.import_module(f"protonet.layers.{_family}")
    except ModuleNotFoundError as _exc:
        if _exc.name != f"protonet.layers.{_family}":
            raise
