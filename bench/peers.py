"""What the benchmarks share: the images with fixed boxes, an LMDB of them, and ssd.pytorch loaded
from a checkout given by path (its code is never part of protonet)."""
import os
import pathlib
import sys
import types

import cv2
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
IMAGES = ROOT.parent / "shared" / "data" / "voc-images"
# Three objects per image (normalised x0, y0, x1, y1, label): the images carry no labels here and
# the samplers' jaccard constraints need objects.
BOXES = np.array([[0.1, 0.2, 0.45, 0.7, 12], [0.5, 0.3, 0.9, 0.95, 15], [0.3, 0.05, 0.6, 0.4, 7]], np.float32)


def image_paths(folder=IMAGES):
    paths = sorted(str(p) for p in pathlib.Path(folder).glob("*.jpg"))
    if not paths:
        raise SystemExit(f"no .jpg images in {folder}")
    return paths


def make_lmdb(folder, out_dir):
    """An AnnotatedDatum LMDB (encoded JPEGs, as SSD's create_data.sh makes) of the images with BOXES;
    returns (lmdb path, label map path)."""
    from protonet.tools.create_annoset import create_annoset

    out_dir = pathlib.Path(out_dir)
    labelmap = out_dir / "labelmap.prototxt"
    labelmap.write_text("".join(f'item {{ name: "{"background" if i == 0 else f"class{i}"}" label: {i} '
                                f'display_name: "c{i}" }}\n' for i in range(21)))
    rows = []
    for path in image_paths(folder):
        h, w = cv2.imread(path).shape[:2]
        for x0, y0, x1, y1, label in BOXES:
            rows.append(f"{path},{x0 * w:.1f},{y0 * h:.1f},{x1 * w:.1f},{y1 * h:.1f},class{int(label)}\n")
    listing = out_dir / "list.csv"
    listing.write_text("".join(rows))
    db = out_dir / "lmdb"
    create_annoset("/", str(listing), str(db), anno_type="detection", label_type="csv",
                   label_map_file=str(labelmap), encoded=True, encode_type="jpg", progress=False)
    return str(db), str(labelmap)


def load_ssd_pytorch(path):
    """Import amdegroot/ssd.pytorch from a checkout at `path` (torchvision stubbed when absent: the
    modules used here import it without using it). Returns a namespace of what the benches use."""
    path = os.path.abspath(path)
    if not os.path.isfile(os.path.join(path, "ssd.py")):
        raise SystemExit(f"--ssd-pytorch {path}: not an ssd.pytorch checkout (no ssd.py)")
    try:
        import torchvision  # noqa: F401
    except ImportError:
        stub = types.ModuleType("torchvision")
        stub.transforms = types.ModuleType("torchvision.transforms")
        sys.modules["torchvision"] = stub
        sys.modules["torchvision.transforms"] = stub.transforms
    sys.path.insert(0, path)
    import tempfile
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)
    # Its COCO module opens ~/data/coco/coco_labels.txt on import: point ~ at a folder that links it.
    home = tempfile.mkdtemp(prefix="ssd_pytorch_home_")
    os.makedirs(os.path.join(home, "data", "coco"))
    os.symlink(os.path.join(path, "data", "coco_labels.txt"), os.path.join(home, "data", "coco", "coco_labels.txt"))
    saved = os.environ.get("HOME")
    os.environ["HOME"] = home
    try:
        from data import detection_collate  # noqa: E402
        from ssd import build_ssd  # noqa: E402
        from utils.augmentations import SSDAugmentation  # noqa: E402
    finally:
        if saved is None:
            os.environ.pop("HOME", None)
        else:
            os.environ["HOME"] = saved

    _fix_mining_mask()
    from layers.modules import MultiBoxLoss  # noqa: E402

    def augmentation(size=300, mean=(104, 117, 123)):
        """SSDAugmentation; its crop modes become an object array: numpy >= 1.24 refuses to choose
        from the ragged tuple it keeps (a known incompatibility of the checkout with new numpy)."""
        aug = SSDAugmentation(size, mean)
        for t in aug.augment.transforms:
            if hasattr(t, "sample_options"):
                t.sample_options = np.array(t.sample_options, dtype=object)
        return aug

    return types.SimpleNamespace(build_ssd=build_ssd, MultiBoxLoss=MultiBoxLoss, SSDAugmentation=augmentation,
                                 detection_collate=detection_collate)


def _fix_mining_mask():
    """The checkout's MultiBoxLoss indexes a (N*P, 1) loss with an (N, P) mask, which torch >= 1.1
    refuses; its users reshape the loss to (N, P) first (ssd.pytorch issue #173). Apply that one-line
    fix to the loaded class, in memory."""
    import inspect
    import textwrap

    import layers.modules.multibox_loss as module

    source = textwrap.dedent(inspect.getsource(module.MultiBoxLoss))
    old = "loss_c[pos] = 0"
    if old not in source or "loss_c = loss_c.view(num, -1)\n        loss_c[pos] = 0" in source:
        return
    source = source.replace(old, "loss_c = loss_c.view(num, -1)\n        " + old, 1)
    namespace = dict(vars(module))
    exec(compile(source, module.__file__, "exec"), namespace)
    module.MultiBoxLoss = namespace["MultiBoxLoss"]
    import layers.modules

    layers.modules.MultiBoxLoss = namespace["MultiBoxLoss"]
