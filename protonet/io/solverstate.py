""".solverstate files: a binary SolverState (iteration, lr step, the update history blobs and the
name of the .caffemodel written with it), as Caffe's solvers snapshot them."""
from __future__ import annotations
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from protonet import caffe_pb2
from protonet.io.blobs import BlobError, array_to_blob, blob_field_pieces, blob_to_array, serialize_around
from protonet.io.atomic import atomic_open
from protonet.io.prototxt import PathLike, read_binary_proto

if TYPE_CHECKING:
    import numpy as np
    import torch

_HISTORY = 3  # SolverState.history


def read_solverstate(path: PathLike) -> caffe_pb2.SolverState:
    return read_binary_proto(os.fspath(path), caffe_pb2.SolverState)


def solverstate_history_arrays(state, source="solverstate"):
    """The history blobs as float arrays, in the solver's learnable-parameter order."""
    arrays = []
    for i, blob in enumerate(state.history):
        try:
            arrays.append(blob_to_array(blob))
        except BlobError as exc:
            raise BlobError(f"{source}: history blob {i}: {exc}") from None
    return arrays


def make_solverstate(iteration: int, learned_net: str = "", current_step: int = 0,
                     history: "Sequence[np.ndarray | torch.Tensor]" = ()) -> caffe_pb2.SolverState:
    """A SolverState with Caffe's fields; `history` (arrays/tensors) goes in as blobs."""
    state = caffe_pb2.SolverState(iter=int(iteration), current_step=int(current_step))
    if learned_net:
        state.learned_net = os.fspath(learned_net)
    for arr in history:
        array_to_blob(arr, blob=state.history.add())
    return state


def write_solverstate(state: caffe_pb2.SolverState, path: PathLike,
                      history: "Sequence[np.ndarray | torch.Tensor] | None" = None) -> None:
    """Write a SolverState at `path` atomically.

    `history` (optional): arrays or tensors streamed in as the history blobs (replacing any in
    `state`), without copying them into protobuf messages.
    """
    with atomic_open(path) as fh:
        if history is None:
            fh.write(state.SerializeToString())
            return
        before, after = serialize_around(state, _HISTORY)
        pieces, _ = blob_field_pieces(_HISTORY, history)
        fh.write(before)
        for piece in pieces:
            fh.write(piece)
        fh.write(after)
