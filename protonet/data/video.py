"""VideoData's source (the SSD fork's video_data_layer.cpp): frames of a video file or a webcam,
read with OpenCV's VideoCapture as there.

VIDEO: frame skip_frames + i * (skip_frames + 1) is record i (the fork skips skip_frames frames
before each one it uses); the records are the video's frames, so a pass longer than the video
starts it again where the fork stops the run (SIGINT). WEBCAM: the next frame of the camera,
read in the calling process (records come in the order they are asked for)."""
import cv2

from protonet import caffe_pb2
from protonet.data.records import CorruptRecord, Sample
from protonet.errors import ProtonetError

V = caffe_pb2.VideoDataParameter


class VideoSource:
    """Frames as Samples (label 0, as the fork's label top)."""

    def __init__(self, param, path, name):
        self.name, self.skip = name, int(param.skip_frames)
        self.webcam = param.video_type == V.WEBCAM
        self.device, self.path = param.device_id, path
        if not self.webcam and not param.HasField("video_file"):
            raise ProtonetError(f"layer {name} (VideoData): video_type VIDEO needs video_file")
        self._cap = None
        cap = self._capture()
        frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if not self.webcam else 0
        self.length = frames // (self.skip + 1) if not self.webcam else 1
        if not self.webcam and self.length == 0:
            raise ProtonetError(f"layer {name} (VideoData): {path} has no frame to use (skip_frames {self.skip})")

    def _capture(self):
        if self._cap is None:
            what = f"webcam {self.device}" if self.webcam else f"video {self.path}"
            cap = cv2.VideoCapture(self.device if self.webcam else self.path)
            if not cap.isOpened():
                raise ProtonetError(f"layer {self.name} (VideoData): cannot open {what}")
            self._cap = cap
        return self._cap

    def __len__(self):
        return self.length

    def load(self, index):
        cap = self._capture()
        if self.webcam:
            for _ in range(self.skip):
                cap.read()
        else:
            cap.set(cv2.CAP_PROP_POS_FRAMES, self.skip + index * (self.skip + 1))
        ok, frame = cap.read()
        if not ok or frame is None:
            raise CorruptRecord(f"layer {self.name} (VideoData): cannot read frame {index}")
        return Sample(f"frame{index}", frame, label=0)

    def first_good(self):
        """The first frame (the fork shapes the tops from it, then starts the video again)."""
        sample = self.load(0)
        if not self.webcam:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
        return sample

    def __getstate__(self):  # a worker process opens its own capture
        state = dict(self.__dict__)
        state["_cap"] = None
        return state
