"""trimformer triton: a bundle's Triton model repository, checked as far as Triton's absence allows.

Every config.pbtxt is parsed with Triton's own ModelConfig protobuf (tritonclient's
model_config_pb2; text_format.Parse refuses unknown fields and bad enum values), every ONNX
model is opened by ONNX Runtime from its file exactly as Triton's ONNX Runtime backend opens it
(the path ``<model>/1/model.onnx``, default options) and its inputs and outputs are compared with
its config the way that backend validates them, and the Python-backend model runs in a clean
interpreter against a stand-in for the utilities only Triton provides.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import json_format, text_format
from PIL import Image
from tritonclient.grpc import model_config_pb2

from tests.conftest import BANK_CONFIGS, export_tiny_bank
from tests.test_cli import assert_one_line_error, cli
from tests.trt_helpers import BANK, make_bank_bundle, profile
from trimformer.bundle import WEIGHTS, read_manifest
from trimformer.errors import UsageError
from trimformer.profiles.device_profiles import DeviceProfile, load_device_profile
from trimformer.runtime import load, load_image
from trimformer.runtime.trt_bank import BankEngine
from trimformer.runtime.trt_build import PluginChoice, build_settings, engine_record, write_engine
from trimformer.runtime.trt_env import GpuIdentity, TrtVersion
from trimformer.serving.triton_repo import PLUGIN_FILE, write_repository

_ORT_TYPES = {"tensor(float)": "TYPE_FP32", "tensor(int64)": "TYPE_INT64"}


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny_bank(tmp_path_factory.mktemp("bank") / "bank")


@pytest.fixture(scope="module")
def repo(bank: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("triton") / "model_repository"
    write_repository(bank, out, load_device_profile("cpu-ort"), preprocess=True)
    return out


def parse_config(folder: Path) -> model_config_pb2.ModelConfig:
    """A config.pbtxt as Triton reads it: text format into inference.ModelConfig."""
    return text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def _type(value: int) -> str:
    return model_config_pb2.DataType.Name(value)


def test_every_config_parses_with_tritons_schema(bank: Path, repo: Path) -> None:
    folders = sorted(p for p in repo.iterdir() if p.is_dir())
    names = {*BANK_CONFIGS, "preprocess", *(f"{c}-image" for c in BANK_CONFIGS)}
    assert {p.name for p in folders} == names
    serving = load_device_profile("cpu-ort").serving
    for folder in folders:
        config = parse_config(folder)
        assert config.name == folder.name
        assert (folder / "1").is_dir()  # Triton needs a version folder, ensembles too
        if folder.name not in BANK_CONFIGS:
            continue
        assert config.backend == "onnxruntime" and config.max_batch_size == 8
        assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
        assert config.dynamic_batching.max_queue_delay_microseconds == serving.max_queue_delay_us
        (group,) = config.instance_group
        assert model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind) == "KIND_CPU"
        assert config.output[0].label_filename == "labels.txt"
        labels = (folder / "labels.txt").read_text().splitlines()
        assert labels == read_manifest(bank)["labels"]


def test_onnx_models_load_as_tritons_backend_loads_them(bank: Path, repo: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 3, 48, 48)).astype(np.float32)
    with load(bank, threads=1) as session:
        for name in BANK_CONFIGS:
            config = parse_config(repo / name)
            model = ort.InferenceSession(str(repo / name / "1" / "model.onnx"))
            for declared, actual in (
                (config.input, model.get_inputs()),
                (config.output, model.get_outputs()),
            ):
                assert [t.name for t in declared] == [a.name for a in actual]
                for tensor, real in zip(declared, actual, strict=True):
                    assert _type(tensor.data_type) == _ORT_TYPES[real.type]
                    dims = [d if isinstance(d, int) else -1 for d in real.shape]
                    assert dims[0] == -1  # batching needs a dynamic first dim
                    assert list(tensor.dims) == dims[1:]
            got = model.run(None, {config.input[0].name: x})[0]
            want = session.run(x, config=name)["logits"]
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_weights_are_stored_once_or_copied_on_request(bank: Path, repo: Path, tmp_path) -> None:
    inode = (bank / WEIGHTS).stat().st_ino
    for name in BANK_CONFIGS:
        weights = repo / name / "1" / WEIGHTS
        assert not weights.is_symlink() and weights.stat().st_ino == inode  # hard links
    copies = tmp_path / "copies"
    write_repository(bank, copies, load_device_profile("cpu-ort"), weights="copy")
    inodes = {(copies / n / "1" / WEIGHTS).stat().st_ino for n in BANK_CONFIGS}
    assert len(inodes) == 3 and inode not in inodes
    assert "a plain copy in each model" in (copies / "README.md").read_text()


def test_why_hard_links_onnx_runtime_refuses_weights_linked_from_another_folder(
    repo: Path, tmp_path: Path
) -> None:
    model = tmp_path / "other" / "1"
    model.mkdir(parents=True)
    shutil.copyfile(repo / "none" / "1" / "model.onnx", model / "model.onnx")
    os.symlink(repo / "tome-r2" / "1" / WEIGHTS, model / WEIGHTS)
    with pytest.raises(Exception, match="escapes model directory"):
        ort.InferenceSession(str(model / "model.onnx"))


def test_ensembles_chain_the_preprocess_model_to_each_config(repo: Path) -> None:
    preprocess = parse_config(repo / "preprocess")
    assert preprocess.backend == "python"
    assert _type(preprocess.input[0].data_type) == "TYPE_STRING"
    assert list(preprocess.output[0].dims) == [3, 48, 48]
    for name in BANK_CONFIGS:
        ensemble, model = parse_config(repo / f"{name}-image"), parse_config(repo / name)
        assert ensemble.platform == "ensemble"
        assert ensemble.max_batch_size <= min(model.max_batch_size, preprocess.max_batch_size)
        first, second = ensemble.ensemble_scheduling.step
        assert first.model_name == "preprocess" and second.model_name == name
        assert dict(first.input_map) == {"IMAGE": ensemble.input[0].name}
        # the tensor preprocess writes is the one the model reads, under the model's input name
        (pixels,) = first.output_map.values()
        assert dict(second.input_map) == {model.input[0].name: pixels}
        assert list(first.output_map) == [preprocess.output[0].name]
        assert [t.name for t in ensemble.output] == list(second.output_map.values())
        assert [(t.name, t.data_type, list(t.dims)) for t in ensemble.output] == [
            (t.name, t.data_type, list(t.dims)) for t in model.output
        ]


_PYTHON_MODEL_RUN = """
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import importlib.util
spec = importlib.util.spec_from_file_location("model", sys.argv[2] + "/1/model.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
import triton_python_backend_utils as pb
model = module.TritonPythonModel()
model.initialize({"model_config": sys.argv[3], "model_repository": sys.argv[2],
                  "model_version": "1", "model_name": "preprocess"})
images = [open(p, "rb").read() for p in sys.argv[5:]]
good = pb.InferenceRequest([pb.Tensor("IMAGE", np.array(images, dtype=object).reshape(-1, 1))])
bad = pb.InferenceRequest([pb.Tensor("IMAGE", np.array([b"no image"], dtype=object)[:, None])])
answers = model.execute([good, bad])
np.save(sys.argv[4], answers[0].output_tensors()[0].as_numpy())
import trimformer
print(json.dumps({
    "name": answers[0].output_tensors()[0].name(),
    "error": answers[1].error().message(),
    "trimformer": trimformer.__file__,
    "heavy": sorted(m for m in ("torch", "onnxruntime", "timm") if m in sys.modules),
}))
"""


def test_python_model_decodes_images_as_load_image_without_torch(
    bank: Path, repo: Path, tmp_path: Path
) -> None:
    standin = tmp_path / "standin"
    standin.mkdir()
    shutil.copyfile(
        Path(__file__).with_name("triton_backend_standin.py"),
        standin / "triton_python_backend_utils.py",
    )
    rng = np.random.default_rng(1)
    images = []
    for index, (size, fmt) in enumerate((((70, 90), "PNG"), ((64, 40), "JPEG"))):
        path = tmp_path / f"image{index}.{fmt.lower()}"
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path, fmt)
        images.append(path)
    config = json_format.MessageToJson(
        parse_config(repo / "preprocess"), preserving_proto_field_name=True
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    args = [str(standin), str(repo / "preprocess"), config, str(tmp_path / "out.npy")]
    done = subprocess.run(
        [sys.executable, "-I", "-c", _PYTHON_MODEL_RUN, *args, *map(str, images)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["name"] == "pixel_values"
    assert "not an image PIL can read" in report["error"]
    assert report["trimformer"].startswith(str(repo / "preprocess" / "1"))  # the copied files
    assert report["heavy"] == []
    preprocess = read_manifest(bank)["preprocess"]
    want = np.stack([load_image(path, preprocess) for path in images])
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), want)


# ------------------------------------------------------------------ the TensorRT backend

GPU = GpuIdentity("NVIDIA GeForce RTX 4090", "8.9")
RTX = load_device_profile("desktop-rtx")


def _engine(bundle: Path, device: DeviceProfile, config: str, stripped: bool, plugins: str) -> None:
    """Record an engine for ``config`` as trimformer build does; the plan's bytes stand for an
    engine (TensorRT cannot build one here), which the repository only links."""
    settings = build_settings(device, TrtVersion(10, 8, 0))
    graph_name = BANK[config]
    graph = read_manifest(bundle)["graphs"][graph_name]
    job = BankEngine(config, graph_name, graph["file"], stripped)
    record = engine_record(settings, GPU, graph, PluginChoice(plugins), None, job)
    write_engine(bundle, f"PLAN {config}".encode(), record)


def test_engines_become_tensorrt_models_where_triton_can_run_them(tmp_path: Path) -> None:
    bundle = make_bank_bundle(tmp_path / "b")
    _engine(bundle, RTX, "tome-r4", stripped=False, plugins="library")
    _engine(bundle, RTX, "fast", stripped=True, plugins="library")
    _engine(bundle, RTX, "none", stripped=False, plugins="qdp")
    library = tmp_path / PLUGIN_FILE
    library.write_bytes(b"\x7fELF stand-in")
    out = tmp_path / "repo"
    plan = write_repository(bundle, out, load_device_profile("desktop-rtx"), plugin_library=library)
    backends = {m.name: (m.backend, m.note) for m in plan.models}
    assert backends["tome-r4"] == ("tensorrt", "")
    assert backends["fast"][0] == "onnxruntime" and "weight-stripped" in backends["fast"][1]
    assert backends["none"][0] == "onnxruntime" and "JIT" in backends["none"][1]
    trt = parse_config(out / "tome-r4")
    assert trt.backend == "tensorrt" and trt.max_batch_size == 64  # desktop-rtx batch max
    assert list(trt.dynamic_batching.preferred_batch_size) == [8, 16]
    assert [list(t.dims) for t in trt.input] == [[17, 8], [17, 1]]
    (group,) = trt.instance_group
    assert model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind) == "KIND_GPU"
    plan_file = bundle / "engines" / "desktop-rtx" / "tome-r4.plan"
    assert (out / "tome-r4" / "1" / "model.plan").stat().st_ino == plan_file.stat().st_ino
    fallback = parse_config(out / "fast")
    assert fallback.backend == "onnxruntime"
    assert model_config_pb2.ModelInstanceGroup.Kind.Name(fallback.instance_group[0].kind) == (
        "KIND_GPU"
    )
    assert (out / PLUGIN_FILE).read_bytes() == library.read_bytes()
    readme = (out / "README.md").read_text()
    assert f"--backend-config=tensorrt,plugins=$PWD/REPOSITORY/{PLUGIN_FILE}" in readme
    assert "TensorRT 10.8.0" in readme


def test_dla_and_aot_engines_need_no_library(tmp_path: Path) -> None:
    bundle = make_bank_bundle(tmp_path / "b")
    dla = profile("jetson-agx-orin", dla_core=1)
    _engine(bundle, dla, "tome-r4", stripped=False, plugins="qdp-aot")
    out = tmp_path / "repo"
    plan = write_repository(bundle, out, dla)
    assert not plan.needs_plugin_library and not (out / PLUGIN_FILE).exists()
    assert plan.models[0].backend == "tensorrt"
    assert "no jetson-agx-orin engine" in plan.models[1].note
    (device,) = parse_config(out / "tome-r4").instance_group[0].secondary_devices
    kinds = model_config_pb2.ModelInstanceGroup.SecondaryDevice.SecondaryDeviceKind
    assert kinds.Name(device.kind) == "KIND_NVDLA" and device.device_id == 1
    assert parse_config(out / "tome-r4").max_batch_size == 4  # DLA: the batch fixed at opt


def test_engine_with_the_library_needs_it_shipped(tmp_path: Path, monkeypatch) -> None:
    bundle = make_bank_bundle(tmp_path / "b")
    _engine(bundle, RTX, "tome-r4", stripped=False, plugins="library")
    monkeypatch.setenv("TRIMFORMER_PLUGIN_LIB", str(tmp_path / "missing.so"))
    with pytest.raises(UsageError, match="engines of tome-r4 load the plugin library") as info:
        write_repository(
            bundle,
            tmp_path / "repo",
            load_device_profile("desktop-rtx"),
            plugin_library=tmp_path / "missing.so",
        )
    assert "\n" not in str(info.value) and not (tmp_path / "repo").exists()


# ------------------------------------------------------------------ the command


def test_cli_writes_the_repository_and_prints_its_models(bank: Path, tmp_path, capsys) -> None:
    out = tmp_path / "repo"
    code, stdout, err = cli(capsys, "triton", str(bank), "-o", str(out))
    assert code == 0, err
    assert "tome-r2 (default)" in stdout and "onnxruntime" in stdout
    assert (out / "tome-r2" / "config.pbtxt").is_file() and not (out / "preprocess").exists()


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--preprocess"], ["declares no image preprocessing", "--preprocess"]),
        (["--device", "nowhere"], ["no device profile or file named 'nowhere'"]),
        (["--device", "jetson-orin-nano", "--preprocess"], ["declares no image preprocessing"]),
    ],
)
def test_cli_errors_are_one_line(tmp_path, capsys, args, needles) -> None:
    bundle = make_bank_bundle(tmp_path / "b")
    code, _, err = cli(capsys, "triton", str(bundle), "-o", str(tmp_path / "repo"), *args)
    assert_one_line_error(code, err, 2, *needles)
    assert not (tmp_path / "repo").exists()


def test_cli_refuses_what_is_not_a_bundle(tmp_path, capsys) -> None:
    code, _, err = cli(capsys, "triton", str(tmp_path), "-o", str(tmp_path / "repo"))
    assert_one_line_error(code, err, 2, "is not a trimformer bundle")


def test_cli_refuses_to_replace_a_repository_without_force(tmp_path, capsys) -> None:
    bundle = make_bank_bundle(tmp_path / "b")
    (tmp_path / "repo").mkdir()
    code, _, err = cli(capsys, "triton", str(bundle), "-o", str(tmp_path / "repo"))
    assert_one_line_error(code, err, 2, "already exists", "--force")
    code, _, err = cli(capsys, "triton", str(bundle), "-o", str(tmp_path / "repo"), "--force")
    assert code == 0, err


def test_config_names_that_clash_with_the_ensembles_are_refused(tmp_path) -> None:
    bundle = make_bank_bundle(tmp_path / "b")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["configs"]["fast-image"] = manifest["configs"].pop("none")  # "fast" + "-image"
    manifest["preprocess"] = {"input_size": [3, 17, 8], "mean": [0.5], "std": [0.5]}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UsageError, match="'fast-image' is also the name of"):
        write_repository(bundle, tmp_path / "repo", load_device_profile("cpu-ort"), True)


def test_encoded_image_bytes_decode_exactly_as_files(bank: Path, tmp_path: Path) -> None:
    from trimformer.runtime.preprocess import decode_image

    buffer = io.BytesIO()
    Image.fromarray(np.full((30, 50, 3), 200, np.uint8)).save(buffer, "PNG")
    (tmp_path / "a.png").write_bytes(buffer.getvalue())
    preprocess = read_manifest(bank)["preprocess"]
    np.testing.assert_array_equal(
        decode_image(buffer.getvalue(), preprocess), load_image(tmp_path / "a.png", preprocess)
    )
