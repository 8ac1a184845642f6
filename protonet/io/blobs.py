"""BlobProto <-> numpy, with the legacy num/channels/height/width shape."""
import numpy as np

from protonet import caffe_pb2


def blob_shape(blob):
    if blob.HasField("shape"):
        return tuple(int(d) for d in blob.shape.dim)
    if any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        return (blob.num, blob.channels, blob.height, blob.width)
    n = len(blob.data) or len(blob.double_data)
    return (n,) if n else (0,)


def blob_to_array(blob, diff=False):
    """The blob's data (or diff) as a float32 array (float64 if stored as double) of its shape."""
    shape = blob_shape(blob)
    if diff:
        values = blob.double_diff if len(blob.double_diff) else blob.diff
        dtype = np.float64 if len(blob.double_diff) else np.float32
    else:
        values = blob.double_data if len(blob.double_data) else blob.data
        dtype = np.float64 if len(blob.double_data) else np.float32
    arr = np.asarray(values, dtype=dtype)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"blob holds {arr.size} values but its shape {list(shape)} needs {int(np.prod(shape))}")
    return arr.reshape(shape)


def array_to_blob(arr, diff=None, blob=None):
    """A BlobProto with `shape` set (Caffe's current form) from a numpy array or tensor."""
    if hasattr(arr, "detach"):
        arr = arr.detach().cpu().numpy()
    arr = np.asarray(arr, dtype=np.float32)
    blob = blob if blob is not None else caffe_pb2.BlobProto()
    blob.shape.dim.extend(arr.shape)
    blob.data.extend(arr.ravel().tolist())
    if diff is not None:
        if hasattr(diff, "detach"):
            diff = diff.detach().cpu().numpy()
        blob.diff.extend(np.asarray(diff, dtype=np.float32).ravel().tolist())
    return blob
