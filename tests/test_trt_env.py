"""TensorRT environment helpers: versions, the lazy import, plugin library lookup, power mode."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import SimpleNamespace

import pytest

from trimformer.errors import UsageError
from trimformer.runtime import trt_env
from trimformer.runtime.trt_env import (
    TensorRTMissing,
    TrtVersion,
    find_plugin_library,
    import_tensorrt,
    parse_power_mode,
    plugin_library_candidates,
)


def test_versions_parse_and_know_their_features():
    assert TrtVersion.parse("10.3.0.26") == TrtVersion(10, 3, 0)
    assert str(TrtVersion.parse("11.1")) == "11.1.0"
    assert TrtVersion.parse("11.0.0").strongly_typed_only
    assert not TrtVersion(10, 16).strongly_typed_only
    assert not TrtVersion(10, 5).has_qdp and TrtVersion(10, 6).has_qdp
    assert not TrtVersion(10, 8).has_aot_qdp and TrtVersion(10, 9).has_aot_qdp
    with pytest.raises(ValueError, match="not a TensorRT version"):
        TrtVersion.parse("ten")


def test_import_refuses_a_stub_only_or_missing_tensorrt(monkeypatch: pytest.MonkeyPatch):
    real = importlib.import_module

    def stubs_only(name: str, *args):
        return SimpleNamespace() if name == "tensorrt" else real(name, *args)

    monkeypatch.setattr(importlib, "import_module", stubs_only)
    with pytest.raises(TensorRTMissing, match=r"no bindings \(type stubs only"):
        import_tensorrt()

    def missing(name: str, *args):
        if name == "tensorrt":
            raise ImportError("No module named 'tensorrt'")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", missing)
    with pytest.raises(TensorRTMissing, match=r"cannot be imported .*install TensorRT 10 or 11"):
        import_tensorrt()

    def broken(name: str, *args):
        if name == "tensorrt":
            raise OSError("libnvinfer.so.10: cannot open shared object file")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", broken)
    with pytest.raises(TensorRTMissing, match=r"libraries cannot be loaded \(libnvinfer"):
        import_tensorrt()


def test_plugin_library_lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    library = tmp_path / "libtrimformer_plugins.so"
    with pytest.raises(UsageError, match="does not exist"):
        find_plugin_library(library)
    library.write_bytes(b"")
    assert find_plugin_library(library) == library
    monkeypatch.setenv(trt_env.PLUGIN_LIBRARY_ENV, str(library))
    assert plugin_library_candidates()[0] == library
    assert find_plugin_library() == library
    monkeypatch.setenv(trt_env.PLUGIN_LIBRARY_ENV, str(tmp_path / "nowhere.so"))
    candidates = plugin_library_candidates()
    assert candidates[1].parts[-3:] == ("plugins", "build", "libtrimformer_plugins.so")
    if not any(c.is_file() for c in candidates):
        with pytest.raises(UsageError, match="`trimformer plugins build`"):
            find_plugin_library()


def test_power_mode_is_read_from_nvpmodel_output(monkeypatch: pytest.MonkeyPatch):
    assert parse_power_mode("NV Power Mode: MAXN\n0\n") == "MAXN"
    assert parse_power_mode("NVPM WARN: ...\nNV Power Mode: 15W\n2\n") == "15W"
    assert parse_power_mode("nothing") is None
    monkeypatch.setattr(trt_env.shutil, "which", lambda name: None)
    assert trt_env.jetson_power_mode() is None
