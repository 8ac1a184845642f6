"""The SSD fork's VideoData (video_data_layer.cpp): frames of a video file, skip_frames skipped
before each used one, transformed by transform_param, label 0; a webcam that cannot be opened is
an error naming it, as there."""
import cv2
import numpy as np
import pytest

from protonet import caffe_pb2
from protonet.errors import ProtonetError
from protonet.io.prototxt import parse_prototxt
from protonet.layers.base import NetContext
from protonet.net import Net

NET = """
layer { name: "data" type: "VideoData" top: "data" top: "label"
        transform_param { mean_value: 10 mean_value: 20 mean_value: 30 scale: 0.5 }
        data_param { batch_size: 2 }
        video_data_param { video_type: VIDEO video_file: "PATH" skip_frames: 1 } }
layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
"""


def write_video(path, frames=7):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (24, 16))
    if not writer.isOpened():
        pytest.skip("OpenCV cannot write an MJPG video here")
    for i in range(frames):
        img = np.zeros((16, 24, 3), np.uint8)
        img[:, :, 0] = 20 * i
        img[4:12, 3 * i:3 * i + 6, 1] = 200
        writer.write(img)
    writer.release()


def decoded_frames(path):
    cap, out = cv2.VideoCapture(str(path)), []
    while True:
        ok, frame = cap.read()
        if not ok:
            return out
        out.append(frame)


def test_video_frames_skip_and_transform(tmp_path):
    video = tmp_path / "v.avi"
    write_video(video)
    net = Net(parse_prototxt(NET.replace("PATH", str(video)), caffe_pb2.NetParameter()),
              ctx=NetContext(data_workers=0, phase=caffe_pb2.TEST))
    assert net.blob_shapes["data"] == (2, 3, 16, 24) and net.blob_shapes["label"] == (2,)
    frames = decoded_frames(video)
    assert len(frames) == 7
    mean = np.float32([10, 20, 30])[:, None, None]
    out = net()
    # frames 1 and 3 (skip one before each), then 5 and, the video having 3 usable frames, 1 again
    for batch, used in ((out, (1, 3)), (net(), (5, 1))):
        want = np.stack([(frames[i].transpose(2, 0, 1).astype(np.float32) - mean) * 0.5 for i in used])
        np.testing.assert_array_equal(batch["data"].numpy(), want)
        np.testing.assert_array_equal(batch["label"].numpy(), [0, 0])


def test_video_and_webcam_that_cannot_be_opened(tmp_path):
    with pytest.raises(ProtonetError, match=r"layer data \(VideoData\): cannot open video .*missing.avi"):
        Net(parse_prototxt(NET.replace("PATH", str(tmp_path / "missing.avi")), caffe_pb2.NetParameter()))
    webcam = NET.replace('video_type: VIDEO video_file: "PATH"', "video_type: WEBCAM device_id: 97")
    with pytest.raises(ProtonetError, match=r"layer data \(VideoData\): cannot open webcam 97"):
        Net(parse_prototxt(webcam, caffe_pb2.NetParameter()))
