""".caffemodel files: a binary NetParameter whose layers carry their learned blobs in Caffe's order.

Reading upgrades old (V0/V1) files as Caffe does. Writing streams the blob data straight from the
arrays into the file (packed little-endian floats), so a VGG-sized net never passes through Python
lists or a second in-memory copy of the whole file; the bytes are the ones Caffe's Net::ToProto +
WriteProtoToBinaryFile give.
"""
import collections
import os

from protonet import caffe_pb2
from protonet.io.blobs import blob_field_pieces, blob_to_array, serialize_around, varint
from protonet.io.prototxt import atomic_open, read_binary_proto
from protonet.io.upgrade import upgrade_net

_NET_LAYER = 100  # NetParameter.layer, its last field
_LAYER_BLOBS = 7  # LayerParameter.blobs
_TAG_NET_LAYER = varint((_NET_LAYER << 3) | 2)


def read_caffemodel(path, input_fields_to_layer=False):
    """The NetParameter of a binary .caffemodel, upgraded to the current `layer` form."""
    net = read_binary_proto(path, caffe_pb2.NetParameter)
    upgrade_net(net, source=os.fspath(path), input_fields_to_layer=input_fields_to_layer)
    return net


def caffemodel_arrays(net_param):
    """Layer name -> list of its blobs as float arrays, for the layers that have blobs, in file order."""
    return collections.OrderedDict(
        (layer.name, [blob_to_array(b) for b in layer.blobs]) for layer in net_param.layer if len(layer.blobs))


def write_caffemodel(net_param, path, blobs=None):
    """Write `net_param` as a binary .caffemodel at `path`, atomically.

    `blobs` (optional): layer name -> list of arrays or tensors. They replace the named layers' blobs
    in the file and are streamed from memory without being copied into protobuf messages; this is the
    fast path for saving a net (pass a NetParameter without blobs). Without `blobs` the message is
    written as it is.
    """
    if blobs is None:
        with atomic_open(path) as fh:
            fh.write(net_param.SerializeToString())
        return
    names = {layer.name for layer in net_param.layer}
    missing = [name for name in blobs if name not in names]
    if missing:
        raise ValueError(f"blobs given for layers not in the net: {', '.join(missing)}")
    with atomic_open(path) as fh:
        head, _ = serialize_around(net_param, _NET_LAYER)
        fh.write(head)
        for layer in net_param.layer:
            arrays = blobs.get(layer.name)
            if arrays is None:
                body = layer.SerializeToString()
                fh.write(_TAG_NET_LAYER + varint(len(body)) + body)
                continue
            before, after = serialize_around(layer, _LAYER_BLOBS)
            pieces, size = blob_field_pieces(_LAYER_BLOBS, arrays)
            fh.write(_TAG_NET_LAYER + varint(len(before) + size + len(after)) + before)
            for piece in pieces:
                fh.write(piece)
            fh.write(after)
