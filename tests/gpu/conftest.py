"""The GPU tier (`pytest -m gpu`, run by `benchmarks/gpu.sh`): every test here is marked `gpu` and is skipped when
torch sees no CUDA device, so CI (CPU only) collects them and shows them as skipped. Each module marks its tests
(`pytestmark`).

`LLAVA_MANAGER_GPU_TESTS_ON_CPU=1` rehearses them on the CPU instead (the `device` fixture is then the CPU): the
same code paths, slower, without what only a GPU has (flash-attention, a second device to split across). It is how
these tests were written and checked on a machine without a GPU; it proves nothing about a GPU."""

from __future__ import annotations

import os

import pytest
import torch

ON_CPU = os.environ.get("LLAVA_MANAGER_GPU_TESTS_ON_CPU", "") not in ("", "0")


def has_cuda() -> bool:
    return torch.cuda.is_available()


def pytest_runtest_setup(item):
    if "gpu" in item.keywords and not has_cuda() and not ON_CPU:
        pytest.skip("needs a CUDA GPU (torch.cuda.is_available() is False; LLAVA_MANAGER_GPU_TESTS_ON_CPU=1 rehearses)")


@pytest.fixture(scope="session")
def device() -> torch.device:
    """The GPU (cuda:0), or the CPU when rehearsing (LLAVA_MANAGER_GPU_TESTS_ON_CPU=1)."""
    return torch.device("cuda", 0) if has_cuda() else torch.device("cpu")


@pytest.fixture(autouse=True)
def _exact_fp32_matmuls():
    """fp32 means fp32 here: no TF32 in matmuls or convolutions (torch's default lets cuDNN use it)."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
