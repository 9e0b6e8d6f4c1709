"""Device profiles: every packaged profile loads; every bad key is refused by name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from trimformer.errors import UsageError
from trimformer.profiles.device_profiles import (
    BatchRange,
    ServingSettings,
    list_device_profiles,
    load_device_profile,
    parse_device_profile,
)

PACKAGED = (
    "cpu-ort",
    "jetson-orin-nano",
    "jetson-orin-nx",
    "jetson-agx-orin",
    "desktop-rtx",
    "datacenter-hopper",
)
TRT = {
    "backend": "tensorrt",
    "precision": "fp16",
    "workspace_mib": 1024,
    "batch": {"min": 1, "opt": 2, "max": 4},
}


def test_every_packaged_profile_loads():
    assert set(PACKAGED) <= set(list_device_profiles())
    for name in PACKAGED:
        profile = load_device_profile(name)
        assert profile.name == name and profile.description
        assert profile.batch.min <= profile.batch.opt <= profile.batch.max
        if profile.backend == "tensorrt":
            assert profile.workspace_mib and profile.builder_optimization_level is not None
            assert profile.providers == ()
        else:
            assert profile.workspace_mib is None and profile.providers


def test_defaults_fill_optional_tensorrt_keys():
    profile = parse_device_profile(TRT, "mine", "mine.yaml")
    assert profile.builder_optimization_level == 3
    assert profile.dla_core is None and profile.gpu_fallback
    assert profile.batch == BatchRange(1, 2, 4)


def test_serving_settings_default_to_the_batch_opt_and_are_packaged():
    profile = parse_device_profile(TRT, "mine", "mine.yaml")
    assert profile.serving == ServingSettings((2,), 100, 1)
    given = {**TRT, "serving": {"preferred_batch": [4, 2, 4], "instances": 2}}
    assert parse_device_profile(given, "x", "x").serving == ServingSettings((2, 4), 100, 2)
    for name in PACKAGED:
        serving = load_device_profile(name).serving
        batch = load_device_profile(name).batch
        assert all(batch.min <= size <= batch.max for size in serving.preferred_batch)


def test_a_users_file_loads_by_path(tmp_path: Path):
    path = tmp_path / "orin-dla.yaml"
    path.write_text(yaml.safe_dump({**TRT, "dla_core": 1}))
    profile = load_device_profile(str(path))
    assert profile.name == "orin-dla" and profile.dla_core == 1


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"worksapce_mib": 1}, "key 'worksapce_mib' is not a key"),
        ({"workspace_mib": "1G"}, "key 'workspace_mib' must be an integer"),
        ({"workspace_mib": True}, "key 'workspace_mib' must be an integer"),
        ({"workspace_mib": 8}, "key 'workspace_mib' must be in 16.."),
        ({"builder_optimization_level": 6}, "key 'builder_optimization_level' must be in 0..5"),
        ({"precision": "bf16"}, "key 'precision' must be one of fp32, fp16, int8 for backend"),
        ({"precision": "fp8"}, "key 'precision' must be one of fp32, fp16, bf16, int8, got"),
        ({"backend": "ncnn"}, "key 'backend' must be one of"),
        ({"device": "GPU"}, "key 'device' applies only to backend openvino"),
        ({"dla_core": 2}, "key 'dla_core' must be in 0..1"),
        ({"dla_core": 0, "precision": "fp32"}, "key 'dla_core' needs precision fp16 or int8"),
        ({"gpu_fallback": "yes"}, "key 'gpu_fallback' must be true or false"),
        ({"providers": ["CPUExecutionProvider"]}, "key 'providers' applies only to backend"),
        ({"batch": {"min": 4, "opt": 2, "max": 8}}, "key 'batch' must satisfy min <= opt <= max"),
        ({"batch": {"min": 1, "opt": 1}}, "key 'batch.max' is missing"),
        ({"batch": {"min": 1, "opt": 1, "max": 1, "step": 1}}, "key 'batch.step' is not a key"),
        ({"batch": {"min": 0, "opt": 1, "max": 1}}, "key 'batch.min' must be in 1.."),
        ({"batch": [1, 2, 4]}, "key 'batch' must be a mapping"),
        ({"description": 3}, "key 'description' must be a string"),
        ({"serving": [4]}, "key 'serving' must be a mapping"),
        ({"serving": {"delay": 5}}, "key 'serving.delay' is not a key"),
        ({"serving": {"preferred_batch": []}}, "key 'serving.preferred_batch' must be a list"),
        ({"serving": {"preferred_batch": [8]}}, "has 8, outside the batch range 1..4"),
        ({"serving": {"max_queue_delay_us": -1}}, "key 'serving.max_queue_delay_us' must be in"),
        ({"serving": {"instances": 0}}, "key 'serving.instances' must be in 1..64"),
    ],
)
def test_bad_keys_are_refused_by_name(change, needle):
    with pytest.raises(UsageError, match=r"device profile mine\.yaml: ") as info:
        parse_device_profile({**TRT, **change}, "mine", "mine.yaml")
    assert needle in str(info.value)


def test_missing_required_keys_and_other_backends_keys():
    data = {k: v for k, v in TRT.items() if k != "workspace_mib"}
    with pytest.raises(
        UsageError, match=r"'workspace_mib' is missing \(required for backend tensorrt"
    ):
        parse_device_profile(data, "x", "x")
    ort = {"backend": "onnxruntime", "precision": "fp32", "batch": TRT["batch"]}
    assert parse_device_profile(ort, "x", "x").providers == ("CPUExecutionProvider",)
    with pytest.raises(UsageError, match="'dla_core' applies only to backend tensorrt"):
        parse_device_profile({**ort, "dla_core": 0}, "x", "x")
    with pytest.raises(UsageError, match="top level"):
        parse_device_profile(["backend"], "x", "x")


def test_unknown_names_and_bad_files_say_what_exists(tmp_path: Path):
    with pytest.raises(UsageError, match=r"packaged: .*jetson-orin-nano"):
        load_device_profile("jetson-xavier")
    broken = tmp_path / "broken.yaml"
    broken.write_text("backend: [tensorrt\n")
    with pytest.raises(UsageError, match="is not valid YAML at line"):
        load_device_profile(str(broken))


@pytest.mark.parametrize(
    ("name", "backend", "precision", "device"),
    [
        ("cpu-ort", "ort", "fp32", None),
        ("cpu-openvino", "openvino", "fp32", "CPU"),
        ("xeon-amx-bf16", "openvino", "bf16", "CPU"),
        ("cpu-openvino-int8", "openvino", "int8", "CPU"),
        ("intel-igpu", "openvino", "fp16", "GPU"),
        ("intel-npu", "openvino", "fp16", "NPU"),
    ],
)
def test_cpu_and_intel_profiles_say_how_the_runtime_runs(name, backend, precision, device):
    options = load_device_profile(name).runtime_options()
    assert (options.backend, options.precision, options.device) == (backend, precision, device)


def test_openvino_profiles_refuse_keys_and_precisions_of_other_backends(tmp_path):
    base = {"backend": "openvino", "precision": "bf16", "batch": {"min": 1, "opt": 1, "max": 8}}
    for change, needle in (
        ({"device": "TPU"}, "key 'device' must be one of CPU, GPU, NPU"),
        ({"providers": ["CPUExecutionProvider"]}, "key 'providers' applies only to backend"),
        ({"workspace_mib": 64}, "key 'workspace_mib' applies only to backend tensorrt"),
    ):
        with pytest.raises(UsageError, match=re.escape(needle)):
            parse_device_profile({**base, **change}, "x", "x")
    with pytest.raises(UsageError, match="for tensorrt engines, which the runtime does not time"):
        load_device_profile("desktop-rtx").runtime_options()
    ort = {**base, "backend": "onnxruntime"}
    with pytest.raises(UsageError, match="must be one of fp32, int8 for backend onnxruntime"):
        parse_device_profile(ort, "x", "x")
