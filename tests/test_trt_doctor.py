"""``trimformer doctor``: a table of every component, the missing ones with a fix; exit 0."""

from __future__ import annotations

import pytest

from trimformer.cli import main
from trimformer.runtime import doctor, trt_env
from trimformer.runtime.doctor import Finding, diagnose

COMPONENTS = (
    "onnxruntime",
    "onnxruntime CUDA EP",
    "onnxruntime TensorRT EP",
    "TensorRT (Python)",
    "TensorRT Python plugins (QDP)",
    "Triton (AOT plugin kernels)",
    "CUDA toolkit (nvcc)",
    "NVIDIA GPU",
    "plugin library",
)


def test_every_component_is_reported_and_missing_ones_say_how():
    findings = {f.component: f for f in diagnose()}
    assert set(COMPONENTS) <= set(findings)
    for finding in findings.values():
        assert finding.detail
        assert finding.ok or finding.fix, finding


def test_without_gpu_tools_or_tensorrt(monkeypatch: pytest.MonkeyPatch, tmp_path):
    monkeypatch.setattr(doctor.shutil, "which", lambda name: None)
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.setattr(trt_env, "CUDA_BIN_DIRS", (tmp_path,))
    findings = {f.component: f for f in diagnose()}
    assert not findings["CUDA toolkit (nvcc)"].ok
    assert "install the CUDA toolkit" in findings["CUDA toolkit (nvcc)"].fix
    if not findings["NVIDIA GPU"].ok:
        assert "NVIDIA GPU and driver" in findings["NVIDIA GPU"].fix


def test_a_failing_probe_becomes_a_finding(monkeypatch: pytest.MonkeyPatch):
    def broken() -> Finding:
        raise RuntimeError("driver crashed")

    monkeypatch.setattr(doctor, "_PROBES", (broken,))
    assert diagnose() == [Finding("broken", False, "probe failed: RuntimeError: driver crashed")]


def test_cli_prints_the_table_and_exits_0(capsys):
    try:
        main(["doctor"])
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr().out
    assert code in (0, None)
    assert "trimformer doctor" in out and "plugin library" in out and "usable" in out


def test_a_missing_plugin_library_says_how_to_build_it(monkeypatch: pytest.MonkeyPatch, tmp_path):
    monkeypatch.setattr(doctor, "_PROBES", (doctor._plugin_library,))
    monkeypatch.setenv("TRIMFORMER_PLUGIN_LIB", str(tmp_path / "absent.so"))
    [finding] = diagnose()
    if not finding.ok:  # a checkout with plugins/build/ holds a built library
        assert "trimformer plugins build" in finding.fix and "TRIMFORMER_PLUGIN_LIB" in finding.fix


def test_nvcc_is_found_where_plugins_build_looks(monkeypatch: pytest.MonkeyPatch, tmp_path):
    # JetPack: /usr/local/cuda/bin holds nvcc but is not on PATH
    nvcc = tmp_path / "nvcc"
    nvcc.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 12.6, V12.6.68'\n")
    nvcc.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.setattr(trt_env, "CUDA_BIN_DIRS", (tmp_path,))
    finding = doctor._nvcc()
    assert finding.ok and finding.detail == f"CUDA 12.6 ({nvcc})"
