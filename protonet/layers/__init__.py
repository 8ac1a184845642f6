"""Layer families. Importing this package registers every type."""
import importlib

from protonet.layers.base import LAYERS, Layer, NetContext, layer_class, register  # noqa: F401

# Each family module registers its types; a family that is not written yet is skipped.
for _family in ("common", "vision", "neuron", "normalization", "loss", "detection", "data", "hdf5", "python",
                "channels", "upsampling"):
    try:
        importlib.import_module(f"protonet.layers.{_family}")
    except ModuleNotFoundError as _exc:
        if _exc.name != f"protonet.layers.{_family}":
            raise


def __getattr__(name):
    # Once this package is imported, `from protonet import layers as L` finds it rather than the
    # NetSpec DSL of the same name; Caffe type names (L.Convolution, ...) still build NetSpec layers.
    if name[:1].isupper():
        from protonet.spec.net_spec import layers as netspec_layers

        return getattr(netspec_layers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
