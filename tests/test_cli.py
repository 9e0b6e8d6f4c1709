"""The CLI as a user meets it: the quick-start commands, and one clear line for every bad input."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trimformer.cli import main


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run the real entry point in-process; return (exit code, stdout, stderr)."""
    try:
        main([*args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, expected_code: int, *needles: str) -> None:
    assert code == expected_code, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


def photo(path: Path) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(path)
    return path


def test_bench_vs_full_prints_a_table_and_writes_json(tome_bundle, tmp_path, capsys):
    out_json = tmp_path / "bench" / "b.json"
    code, out, err = cli(
        capsys,
        "bench",
        str(tome_bundle),
        "--vs-full",
        "--runs",
        "3",
        "--warmup",
        "1",
        "--batch",
        "2",
        "--json",
        str(out_json),
        "--profile-ops",
    )
    assert code == 0, err
    assert "speed-up" in out and "reduced" in out and "full" in out
    figures = json.loads(out_json.read_text())
    for key in (
        "latency_ms_p50",
        "latency_ms_p90",
        "throughput",
        "flops",
        "full_latency_ms_p50",
        "full_flops",
        "speedup",
    ):
        assert figures[key] > 0, key
    assert figures["batch"] == 2
    profile = figures["op_profile"]
    assert set(profile["reduction_ms"]) == {"BipartiteMerge"}
    assert 0 < profile["reduction_share"] < 1
    assert "reduction ops:" in out


def test_run_prints_top_classes(tome_bundle, tmp_path, capsys):
    code, out, err = cli(
        capsys, "run", str(tome_bundle), str(photo(tmp_path / "a.png")), "--top", "3"
    )
    assert code == 0, err
    assert "a.png" in out and out.count("0.") >= 3


def test_profiles_list_and_show(capsys):
    code, out, _ = cli(capsys, "profiles", "list")
    assert code == 0 and "deit-small-tome-r13" in out
    code, out, _ = cli(capsys, "profiles", "show", "deit-small-tome-r13")
    assert code == 0 and "method: tome" in out and "r: 13" in out


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (
            ["export", "deit_smol_patch16_224", "-o", "{tmp}/o"],
            ["unknown model", "deit_small_patch16_224"],
        ),
        (
            ["export", "deit_tiny_patch16_224", "--method", "tomato", "-o", "{tmp}/o"],
            ["unknown method", "tome"],
        ),
        (
            ["export", "deit_tiny_patch16_224", "--method", "tome", "--r", "-1", "-o", "{tmp}/o"],
            ["r must be >= 0"],
        ),
        (
            ["export", "deit_tiny_patch16_224", "--method", "tome", "--r", "x", "-o", "{tmp}/o"],
            ["--r 'x'"],
        ),
        (["export", "deit_tiny_patch16_224", "--r", "4", "-o", "{tmp}/o"], ["--method tome"]),
        (
            ["export", "deit_tiny_patch16_224", "--config", "nope", "-o", "{tmp}/o"],
            ["no profile or file", "deit-small-tome-r13"],
        ),
        (
            [
                "export",
                "deit_tiny_patch16_224",
                "--checkpoint",
                "{tmp}/missing.pt",
                "-o",
                "{tmp}/o",
            ],
            ["does not exist"],
        ),
        (
            [
                "export",
                "deit_tiny_patch16_224",
                "--checkpoint",
                "{tmp}/garbage.safetensors",
                "-o",
                "{tmp}/o",
            ],
            ["not a valid safetensors"],
        ),
        (
            [
                "export",
                "deit_tiny_patch16_224",
                "--checkpoint",
                "{tmp}/garbage.pt",
                "-o",
                "{tmp}/o",
            ],
            ["cannot be loaded safely"],
        ),
        (["export", "deit_tiny_patch16_224", "--opset", "9", "-o", "{tmp}/o"], ["--opset 9"]),
        (["export", "deit_tiny_patch16_224", "-o", "{tmp}/afile/o"], ["cannot write", "writable"]),
        (["bench", "{tmp}"], ["not a trimformer bundle"]),
        (["run", "{tmp}", "{tmp}/garbage.pt"], ["not a trimformer bundle"]),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(args, needles, tmp_path, capsys):
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00garbage" * 10)
    (tmp_path / "garbage.pt").write_bytes(b"PK\x03\x04 not a zip" * 10)
    (tmp_path / "afile").write_text("a file, not a folder")
    code, _, err = cli(capsys, *[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert_one_line_error(code, err, 2, *needles)
    assert not (tmp_path / "o").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary leftovers"


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_code_in_a_checkpoint_is_refused_and_never_run(tmp_path, capsys):
    marker = tmp_path / "pwned"
    exploit = _Exploit()
    exploit.marker = marker
    with (tmp_path / "evil.pt").open("wb") as f:
        pickle.dump({"head.weight": exploit}, f)
    code, _, err = cli(
        capsys,
        "export",
        "deit_tiny_patch16_224",
        "--checkpoint",
        str(tmp_path / "evil.pt"),
        "-o",
        str(tmp_path / "o"),
    )
    assert_one_line_error(code, err, 2, "cannot be loaded safely")
    assert not marker.exists()


def test_checkpoint_for_another_model_is_refused(tmp_path, capsys):
    import torch

    torch.save({"foo.weight": torch.zeros(2, 2)}, tmp_path / "other.pt")
    code, _, err = cli(
        capsys,
        "export",
        "deit_tiny_patch16_224",
        "--checkpoint",
        str(tmp_path / "other.pt"),
        "-o",
        str(tmp_path / "o"),
    )
    assert_one_line_error(code, err, 2, "does not fit deit_tiny_patch16_224", "missing keys")


def test_corrupt_model_and_not_an_image(tome_bundle, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(tome_bundle, broken)
    with (broken / "model.onnx").open("r+b") as f:
        f.seek(100)
        f.write(b"\xff\xff\xff\xff")
    code, _, err = cli(capsys, "bench", str(broken), "--runs", "1")
    assert_one_line_error(code, err, 2, "model.onnx", "sha256", "re-export")

    not_image = tmp_path / "notes.txt"
    not_image.write_text("hello")
    code, _, err = cli(capsys, "run", str(tome_bundle), str(not_image))
    assert_one_line_error(code, err, 2, "notes.txt", "not an image")


def test_existing_output_is_not_overwritten(tome_bundle, capsys):
    before = (tome_bundle / "manifest.json").read_bytes()
    code, _, err = cli(capsys, "export", "deit_tiny_patch16_224", "-o", str(tome_bundle))
    assert_one_line_error(code, err, 2, "already exists", "--force")
    assert (tome_bundle / "manifest.json").read_bytes() == before


def test_console_script_help_is_fast_and_lazy():
    code = (
        "import sys; from trimformer.cli import cli; "
        "assert 'torch' not in sys.modules and 'timm' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    result = subprocess.run(
        [sys.executable, "-m", "trimformer.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "export" in result.stdout and "bench" in result.stdout


def test_sample_application_classifies_a_folder(tome_bundle, tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        photo(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    sample = Path(__file__).parent.parent / "samples" / "classify_folder.py"
    result = subprocess.run(
        [sys.executable, str(sample), str(tome_bundle), str(tmp_path), "--batch", "2"],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [row[0] for row in rows] == ["a.png", "b.png", "c.png"]
    assert all(0 < float(row[2]) <= 1 for row in rows)
    # a backend this machine lacks: one line saying what is missing, no traceback
    for backend, says in (
        ("cuda", "CUDAExecutionProvider"),
        ("tensorrt", "no engine for 'desktop-rtx'"),
    ):
        failed = subprocess.run(
            [sys.executable, str(sample), str(tome_bundle), str(tmp_path), "--backend", backend],
            capture_output=True,
            text=True,
        )
        assert failed.returncode == 1 and failed.stderr.startswith("error: ")
        assert says in failed.stderr and len(failed.stderr.strip().splitlines()) == 1
