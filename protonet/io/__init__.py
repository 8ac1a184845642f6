"""Files in and out: prototxt, caffemodel, solverstate, label maps, upgrades of old files."""
from protonet.io.prototxt import (  # noqa: F401
    atomic_write,
    parse_prototxt,
    read_binary_proto,
    read_prototxt,
    write_binary_proto,
    write_prototxt,
)
from protonet.io.blobs import array_to_blob, blob_to_array  # noqa: F401
