"""Files in and out: prototxt, caffemodel, solverstate, label maps, upgrades of old files."""
from protonet.io.atomic import atomic_open, atomic_write  # noqa: F401
from protonet.io.prototxt import (  # noqa: F401
    format_prototxt,
    parse_prototxt,
    read_binary_proto,
    read_net_prototxt,
    read_prototxt,
    read_solver_prototxt,
    write_binary_proto,
    write_prototxt,
)
from protonet.io.blobs import array_to_blob, blob_fits_shape, blob_shape, blob_to_array  # noqa: F401
from protonet.io.upgrade import upgrade_net, upgrade_solver  # noqa: F401
from protonet.io.caffemodel import (  # noqa: F401
    caffemodel_arrays,
    read_caffemodel,
    read_caffemodel_arrays,
    write_caffemodel,
)
from protonet.io.solverstate import (  # noqa: F401
    make_solverstate,
    read_solverstate,
    solverstate_history_arrays,
    write_solverstate,
)
from protonet.io.labelmap import (  # noqa: F401
    map_label_to_display_name,
    map_label_to_name,
    map_name_to_label,
    read_label_file,
    read_labelmap,
    write_labelmap,
)
