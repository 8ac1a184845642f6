"""ImageData's source: `path label` lines of a list file, images read like Caffe's ReadImageToCVMat."""
import os

import cv2

from protonet.data.records import CorruptRecord, Sample, read_image_file
from protonet.errors import ProtonetError
from protonet.io.prototxt import read_utf8_lines


class ImageListSource:
    """`path label` lines of an ImageData source file; load(i) reads the i-th image."""

    def __init__(self, list_path, root_folder, new_height, new_width, is_color, name):
        if not os.path.isfile(list_path):
            raise ProtonetError(f"layer {name}: {list_path}: no such image list")
        self.lines = []
        for lineno, line in enumerate(read_utf8_lines(list_path), 1):
            if not line.strip():
                continue
            path, _, label = line.rpartition(" ")
            try:
                self.lines.append((path, int(label), lineno))
            except ValueError:
                raise ProtonetError(f"{list_path}:{lineno}: expected 'path label', "
                                    f"got {line!r}") from None
        if not self.lines:
            raise ProtonetError(f"layer {name}: {list_path}: the image list is empty")
        self.list_path = list_path
        self.name = name
        self.root = root_folder
        self.size = (new_width, new_height) if new_height > 0 and new_width > 0 else None
        self.flag = cv2.IMREAD_COLOR if is_color else cv2.IMREAD_GRAYSCALE

    def __len__(self):
        return len(self.lines)

    def load(self, index):
        path, label, lineno = self.lines[index]
        img = read_image_file(self.root + path, self.flag)
        if img is None:
            raise CorruptRecord(f"{self.list_path}:{lineno}: cannot read image {self.root + path}")
        if self.size:
            img = cv2.resize(img, self.size)
        if img.ndim == 2:
            img = img[:, :, None]
        return Sample(path, img, label=label)

    def first_good(self):
        """The first image that can be read (Caffe shapes the tops from it)."""
        for i in range(len(self)):
            try:
                return self.load(i)
            except CorruptRecord:
                continue
        raise ProtonetError(f"layer {self.name}: no image of {self.list_path} can be read")
