"""The files protonet ships for its users: the NetSpec example scripts (`protonet gen NAME`), the
quickstart's script, and the data scripts and label maps of VOC0712 and COCO (create_list.sh,
create_data.sh, labelmap_*.prototxt).

In a checkout, `examples/` and `scripts/` here are links to the repository's top-level folders;
a built wheel holds copies of them inside this package, so an installed protonet has them too.
"""
import pathlib
import shutil

from protonet.errors import ProtonetError

ROOT = pathlib.Path(__file__).resolve().parent
EXAMPLES = ROOT / "examples"
SCRIPTS = ROOT / "scripts"
QUICKSTART_SCRIPT = EXAMPLES / "quickstart" / "ssd_shapes.py"


def examples():
    """Bundled NetSpec scripts: {'ssd/ssd_pascal': path, 'refinedet/VGG16_VOC2007_320': path, ...}."""
    return {path.relative_to(EXAMPLES).with_suffix("").as_posix(): path
            for path in sorted(EXAMPLES.glob("*/*.py"))}


def _short_names(found):
    """{'ssd_pascal': 'ssd/ssd_pascal', ...} for the basenames that name one example only."""
    by_base = {}
    for name in found:
        by_base.setdefault(name.rsplit("/", 1)[-1], []).append(name)
    return {base: names[0] for base, names in by_base.items() if len(names) == 1}


def find_example(name):
    """The bundled script that `name` means, or None: `ssd_pascal`, `ssd/ssd_pascal`,
    `examples/ssd/ssd_pascal.py` (the path in protonet's repository) all name the same one."""
    key = str(name).replace("\\", "/")
    key = key[len("examples/"):] if key.startswith("examples/") else key
    key = key[:-len(".py")] if key.endswith(".py") else key
    found = examples()
    key = _short_names(found).get(key, key)
    return found.get(key)


def script_path(name):
    """`name` when it is a file; otherwise the bundled example it names (ProtonetError if none)."""
    path = pathlib.Path(name)
    if path.is_file():
        return path
    bundled = find_example(name)
    if bundled is None:
        names = sorted(_short_names(examples()))
        raise ProtonetError(f"{name}: no such script, and no bundled example of that name "
                            f"(bundled: {', '.join(names)})")
    return bundled


def data_scripts():
    """The bundled data scripts and label maps: {'VOC0712/create_data.sh': path, ...}."""
    return {path.relative_to(SCRIPTS).as_posix(): path for path in sorted(SCRIPTS.glob("*/*")) if path.is_file()}


def copy_to(destination):
    """Copy examples/ and scripts/ into `destination` (a Caffe-root-like folder); returns the paths
    written. Existing files are left alone and not listed."""
    destination = pathlib.Path(destination)
    written = []
    for folder, files in (("examples", examples().values()), ("scripts", data_scripts().values())):
        source_root = EXAMPLES if folder == "examples" else SCRIPTS
        for source in files:
            target = destination / folder / source.relative_to(source_root)
            if target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
            written.append(target)
    return written
