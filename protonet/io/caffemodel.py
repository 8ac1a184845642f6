""".caffemodel files: a binary NetParameter whose layers carry their learned blobs in Caffe's order.

Reading upgrades old (V0/V1) files as Caffe does. Writing streams the blob data straight from the
arrays into the file (packed little-endian floats), so a VGG-sized net never passes through Python
lists or a second in-memory copy of the whole file.
"""
import collections
import os

from protonet import caffe_pb2
from protonet.io.blobs import blob_pieces, blob_to_array, varint
from protonet.io.prototxt import atomic_open, read_binary_proto
from protonet.io.upgrade import upgrade_net

_TAG_NET_LAYER = varint((100 << 3) | 2)  # NetParameter.layer = 100
_TAG_LAYER_BLOB = varint((7 << 3) | 2)  # LayerParameter.blobs = 7


def read_caffemodel(path, input_fields_to_layer=False):
    """The NetParameter of a binary .caffemodel, upgraded to the current `layer` form."""
    net = read_binary_proto(path, caffe_pb2.NetParameter)
    upgrade_net(net, source=os.fspath(path), input_fields_to_layer=input_fields_to_layer)
    return net


def caffemodel_arrays(net_param):
    """Layer name -> list of its blobs as float arrays, for the layers that have blobs, in file order."""
    return collections.OrderedDict(
        (layer.name, [blob_to_array(b) for b in layer.blobs]) for layer in net_param.layer if len(layer.blobs))


def _copy_fields(source, target, keep):
    for fd, value in source.ListFields():
        if not keep(fd):
            continue
        if fd.is_repeated:
            getattr(target, fd.name).extend(value)
        elif fd.message_type is not None:
            getattr(target, fd.name).CopyFrom(value)
        else:
            setattr(target, fd.name, value)
    return target


def _layer_around_blobs(layer):
    """The serialized fields of `layer` numbered below and above `blobs` (7), without its blobs.

    Protobuf writes fields in number order, so head + blobs + tail are the bytes Caffe writes."""
    head = _copy_fields(layer, caffe_pb2.LayerParameter(), lambda fd: fd.number < 7)
    tail = _copy_fields(layer, caffe_pb2.LayerParameter(), lambda fd: fd.number > 7)
    return head.SerializeToString(), tail.SerializeToString()


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
        # NetParameter.layer (100) is its last field: everything else goes first.
        head = _copy_fields(net_param, caffe_pb2.NetParameter(), lambda fd: fd.name != "layer")
        fh.write(head.SerializeToString())
        for layer in net_param.layer:
            arrays = blobs.get(layer.name)
            if arrays is None:
                body = layer.SerializeToString()
                fh.write(_TAG_NET_LAYER + varint(len(body)) + body)
                continue
            before, after = _layer_around_blobs(layer)
            blob_chunks = []
            for arr in arrays:
                pieces = blob_pieces(arr)
                blob_chunks.append([_TAG_LAYER_BLOB + varint(sum(len(p) for p in pieces))] + pieces)
            size = len(before) + len(after) + sum(len(p) for chunk in blob_chunks for p in chunk)
            fh.write(_TAG_NET_LAYER + varint(size) + before)
            for chunk in blob_chunks:
                for piece in chunk:
                    fh.write(piece)
            fh.write(after)
