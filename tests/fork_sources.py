"""The Caffe forks' own Python files, for the tests that run them as the oracle.

They are third-party code and are not part of this repository. To run those tests, set
PROTONET_FORK_SOURCES to a directory holding two checkouts (tests/fixtures/reference/README.txt):

    $PROTONET_FORK_SOURCES/refinedet/   sfzhang15/RefineDet
    $PROTONET_FORK_SOURCES/ssd/         weiliu89/caffe, branch ssd

It defaults to ../shared/fork-sources beside the checkout (CI has it), so the oracle tests run
there; without either they skip. A file missing under a directory that is set is a failure (a
wrong directory must not pass as "skipped").
"""
import os
import pathlib

import pytest

VARIABLE = "PROTONET_FORK_SOURCES"
FAMILIES = ("refinedet", "ssd")


DEFAULT = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "fork-sources"


def fork_root():
    """The directory PROTONET_FORK_SOURCES names, else ../shared/fork-sources when it exists, else None."""
    value = os.environ.get(VARIABLE, "").strip()
    if value:
        return pathlib.Path(value).expanduser()
    return DEFAULT if DEFAULT.is_dir() else None


def fork_file(family, relative):
    """`relative` (e.g. 'python/caffe/model_libs.py') in the checkout of `family`, or skip the
    calling test when PROTONET_FORK_SOURCES is not set."""
    assert family in FAMILIES, family
    root = fork_root()
    if root is None:
        pytest.skip(f"{VARIABLE} not set: the {family} fork's {relative} is needed as the oracle")
    path = root / family / relative
    if not path.is_file():
        pytest.fail(f"{VARIABLE}={root}: {path} does not exist (expected a checkout of the {family} fork; "
                    f"see tests/fixtures/reference/README.txt)", pytrace=False)
    return path
