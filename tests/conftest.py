import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
# lmms-eval runs keep no answers in the user's cache unless a test gives its own store (response_cache=FOLDER)
os.environ.setdefault("LLAVA_MANAGER_RESPONSE_CACHE", "none")

import pytest  # noqa: E402
from support.helpers import DISTRIBUTED_ENV  # noqa: E402


@pytest.fixture(autouse=True)
def _restore_distributed_env():
    """Each test leaves the launcher variables as it found them."""
    before = {k: os.environ.get(k) for k in DISTRIBUTED_ENV}
    yield
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _published(tmp_path_factory, variant: str):
    from support.published import PUBLISHED_REPOS, write_published_checkpoint

    name = PUBLISHED_REPOS[variant].split("/")[1]
    return write_published_checkpoint(tmp_path_factory.mktemp("published") / name, variant)


@pytest.fixture(scope="session")
def published_si(tmp_path_factory):
    """A tiny random checkpoint with the files and field values of llava-hf/llava-onevision-qwen2-0.5b-si-hf
    (see tests/support/published.py); built once per session. Read-only: copy it before changing anything."""
    return _published(tmp_path_factory, "si")


@pytest.fixture(scope="session")
def published_ov(tmp_path_factory):
    """As `published_si`, for llava-hf/llava-onevision-qwen2-0.5b-ov-hf."""
    return _published(tmp_path_factory, "ov")
