"""Which nvcc builds the kernel library: the CUDA major of the installed TensorRT (or
HIRN_CUDA_MAJOR), never newer than the driver. Fake toolkits stand in for real ones."""

import types

import pytest

from hirn.core.errors import KernelBuildError
from hirn.plugins import loader


@pytest.fixture
def toolkits(tmp_path, monkeypatch):
    """Versioned toolkits 12.8 and 13.0 under tmp_path; returns {version: nvcc path}."""
    paths = {}
    for version in ("12.8", "13.0"):
        nvcc = tmp_path / f"cuda-{version}" / "bin" / "nvcc"
        nvcc.parent.mkdir(parents=True)
        nvcc.write_text(f"#!/bin/sh\necho 'Cuda compilation tools, release {version}, "
                        f"V{version}.0'\n")
        nvcc.chmod(0o755)
        paths[version] = str(nvcc)
    monkeypatch.setattr(loader, "VERSIONED_CUDA_ROOTS", str(tmp_path / "cuda-*"))
    monkeypatch.delenv("HIRN_CUDA_MAJOR", raising=False)
    monkeypatch.setattr(loader, "driver_cuda_version", lambda: None)
    monkeypatch.setattr(loader, "tensorrt_cuda_major", lambda: None)
    return paths


def test_versioned_toolkits_are_candidates_newest_first(toolkits):
    candidates = loader.nvcc_candidates()
    assert candidates.index(toolkits["13.0"]) < candidates.index(toolkits["12.8"])
    assert loader.find_nvcc(12) == toolkits["12.8"]


def test_the_cuda_major_of_tensorrt_is_chosen(toolkits, monkeypatch):
    monkeypatch.setattr(loader, "tensorrt_cuda_major", lambda: (12, "tensorrt-cu12 10.16.0"))
    nvcc, why = loader.choose_nvcc()
    assert nvcc == toolkits["12.8"]
    assert "CUDA 12.8" in why and "TensorRT is built for CUDA 12 (tensorrt-cu12" in why


def test_never_newer_than_the_driver(toolkits, monkeypatch):
    monkeypatch.setattr(loader, "driver_cuda_version", lambda: (12, 4))
    nvcc, why = loader.choose_nvcc()
    assert nvcc == toolkits["12.8"] and "the driver runs CUDA 12.4" in why
    monkeypatch.setenv("HIRN_CUDA_MAJOR", "13")
    with pytest.raises(KernelBuildError, match="no nvcc fits: need CUDA 13 .*at most CUDA 12"):
        loader.choose_nvcc()


def test_with_a_driver_the_major_of_tensorrt_is_a_preference(toolkits, monkeypatch):
    """The kernel library serves PyTorch: a driver that runs CUDA 13 runs it from nvcc 13 even
    beside a TensorRT for CUDA 11, of which no nvcc is installed."""
    monkeypatch.setattr(loader, "driver_cuda_version", lambda: (13, 0))
    monkeypatch.setattr(loader, "tensorrt_cuda_major", lambda: (12, "tensorrt-cu12 10.16.0"))
    assert loader.choose_nvcc()[0] == toolkits["12.8"]
    monkeypatch.setattr(loader, "tensorrt_cuda_major", lambda: (11, "tensorrt-cu11 10.0.1"))
    nvcc, why = loader.choose_nvcc()
    assert loader.cuda_version(nvcc)[0] == 13 and "no CUDA 11 nvcc" in why


def test_refuses_to_build_without_the_wanted_major(toolkits, monkeypatch, tmp_path):
    monkeypatch.setattr(loader, "tensorrt_cuda_major", lambda: (11, "tensorrt-cu11 10.0.1"))
    with pytest.raises(KernelBuildError, match="need CUDA 11 .*set HIRN_NVCC"):
        loader.compile_kernel_library(archs=("80",), cache=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # nothing compiled


def test_tensorrt_wheels_tell_their_cuda_major(monkeypatch):
    from importlib import metadata

    def dist(name, version):
        return types.SimpleNamespace(metadata={"Name": name}, version=version)

    monkeypatch.setattr(metadata, "distributions", lambda: [
        dist("numpy", "2.0"), dist("tensorrt_cu13_libs", "11.1.0")])
    assert loader.tensorrt_cuda_major() == (13, "tensorrt_cu13_libs 11.1.0")
    monkeypatch.setattr(metadata, "distributions", lambda: [dist("tensorrt", "10.16.0")])
    assert loader.tensorrt_cuda_major() is None
