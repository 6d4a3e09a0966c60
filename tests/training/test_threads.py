"""`--cpu_threads`: one thread for the embedded default on a machine without a GPU, torch's default otherwise or when
OMP_NUM_THREADS says, any number when asked; bad values are named; a run gives the process its thread count back."""

from __future__ import annotations

import pytest
import torch

from llava_manager.training import threads, train


@pytest.fixture
def no_omp(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


def test_auto_is_one_thread_only_for_the_embedded_default_without_a_gpu(no_omp, monkeypatch):
    assert threads.resolve("auto", embedded_default=True, accelerator=False) == 1
    assert threads.resolve("auto", embedded_default=False, accelerator=False) is None
    assert threads.resolve("auto", embedded_default=True, accelerator=True) is None
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.resolve("auto", embedded_default=True, accelerator=False) is None


@pytest.mark.parametrize("setting", ["0", "-1", "two", ""])
def test_a_bad_setting_names_what_is_allowed(setting):
    with pytest.raises(ValueError, match=r"--cpu_threads .*auto, or a number of threads >= 1"):
        threads.resolve(setting, embedded_default=True, accelerator=False)


def test_a_run_uses_its_threads_and_gives_them_back(no_omp, monkeypatch, tmp_path):
    before = torch.get_num_threads()
    seen = []
    monkeypatch.setattr(train, "_run", lambda *args: seen.append(torch.get_num_threads()))
    with pytest.raises(ValueError, match="--cpu_threads 'x'"):
        train.run("stage2", ["--output_dir", str(tmp_path), "--cpu_threads", "x"])
    train.run("stage2", ["--output_dir", str(tmp_path)])
    train.run("stage2", ["--output_dir", str(tmp_path), "--cpu_threads", "3"])
    assert seen == [1 if not torch.cuda.is_available() else before, 3]
    assert torch.get_num_threads() == before
