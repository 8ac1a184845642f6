import os
import pathlib

import pytest

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture
def fixtures():
    return FIXTURES


def shared_path(*parts):
    """A path in ../shared, or skip the test when ../shared is not beside the checkout."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not present")
    return p


def cuda_available():
    import torch

    return torch.cuda.is_available()


os.environ.setdefault("PROTONET_TEST", "1")
