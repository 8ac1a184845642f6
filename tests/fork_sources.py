"""The Caffe forks' own Python files, for the tests that run them as the oracle.

They are third-party code and are not part of this repository. To run those tests, set
PROTONET_FORK_SOURCES to a directory holding two checkouts (tests/fixtures/reference/README.txt):

    $PROTONET_FORK_SOURCES/refinedet/   sfzhang15/RefineDet
    $PROTONET_FORK_SOURCES/ssd/         weiliu89/caffe, branch ssd

Without it those tests skip; a file missing under a directory that is set is a failure (a
wrong directory must not pass as "skipped").
"""
import os
import pathlib

import pytest

VARIABLE = "PROTONET_FORK_SOURCES"
FAMILIES = ("refinedet", "ssd")


def fork_root():
    """The directory PROTONET_FORK_SOURCES names, or None when it is not set."""
    value = os.environ.get(VARIABLE, "").strip()
    return pathlib.Path(value).expanduser() if value else None


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
