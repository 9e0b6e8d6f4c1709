"""Device telemetry: parsers on real output formats, readers on real files, bench's new figures.

NVML is not faked: its test runs where a GPU and the driver are (marked gpu); here only the
"unavailable, why" path can run, and does. Jetson tools are absent here, so their parsers are
tested on text in the formats JetPack 4/5/6 print, and the tegrastats meter's process handling
on a stand-in script that prints such lines.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

import trimformer.runtime.bench as bench_module
from trimformer.cli import main
from trimformer.runtime import benchmark, load
from trimformer.runtime.bench import _energy_blocks, _progress, random_inputs, render_table
from trimformer.runtime.telemetry import (
    JetsonState,
    NvmlMeter,
    RaplMeter,
    RssMeter,
    TegrastatsMeter,
    Telemetry,
    Unavailable,
    module_power_mw,
    parse_jetson_clocks,
    parse_nvpmodel,
    parse_proc_status,
    parse_tegrastats_line,
    sysfs_clock_locks,
)

# tegrastats lines as JetPack prints them: Orin Nano (JetPack 6), AGX Orin (JetPack 5), Nano
# (JetPack 4, no units on the rails)
ORIN_NANO_JP6 = (
    "06-18-2025 11:25:24 RAM 3452/7620MB (lfb 25x4MB) SWAP 1518/16384MB (cached 174MB) "
    "CPU [1%@1420,2%@1420,0%@1420,2%@1420,2%@729,1%@729] GR3D_FREQ 0% cpu@50.031C "
    "soc2@49.031C soc0@50C gpu@49.031C tj@50.25C soc1@50.25C "
    "VDD_IN 4824mW/4824mW VDD_CPU_GPU_CV 518mW/518mW VDD_SOC 1475mW/1475mW"
)
AGX_ORIN_JP5 = (
    "08-04-2023 10:01:13 RAM 2433/30536MB (lfb 6311x4MB) SWAP 0/15268MB (cached 0MB) "
    "CPU [0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729] EMC_FREQ 0%@2133 "
    "GR3D_FREQ 0%@[305,305] VIC_FREQ 729 APE 174 CV0@-256C CPU@44.218C Tboard@34C "
    "SOC2@40.843C Tdiode@35.25C SOC0@41.875C CV1@-256C GPU@39.25C tj@44.218C SOC1@39.781C "
    "CV2@-256C VDD_GPU_SOC 2392mW/2392mW VDD_CPU_CV 398mW/398mW VIN_SYS_5V0 2821mW/2821mW "
    "NC 0mW/0mW VDDQ_VDD2_1V8AO 200mW/200mW NC 0mW/0mW"
)
NANO_JP4 = (
    "RAM 1216/3964MB (lfb 505x4MB) SWAP 0/1982MB (cached 0MB) IRAM 0/252kB(lb 252kB) "
    "CPU [2%@102,1%@102,0%@102,0%@102] EMC_FREQ 0%@1600 GR3D_FREQ 0%@76 APE 25 PLL@22C "
    "CPU@24.5C PMIC@100C GPU@23C AO@30.5C thermal@23.75C POM_5V_IN 1281/1281 POM_5V_GPU 0/0 "
    "POM_5V_CPU 163/163"
)


def _cpu_line(cpu: int, online: int, low: int, high: int, now: int, idle: int) -> str:
    """One cpu line of ``jetson_clocks --show``."""
    return (
        f"cpu{cpu}: Online={online} Governor=schedutil MinFreq={low} MaxFreq={high} "
        f"CurrentFreq={now} IdleStates: WFI={idle} c7={idle}\n"
    )


JETSON_CLOCKS_NANO = (
    "SOC family:tegra210  Machine:NVIDIA Jetson Nano Developer Kit\nOnline CPUs: 0-3\n"
    + "".join(_cpu_line(i, 1, 102000, 1428000, 1428000, 1) for i in range(4))
    + "GPU MinFreq=76800000 MaxFreq=921600000 CurrentFreq=153600000\n"
    "EMC MinFreq=204000000 MaxFreq=1600000000 CurrentFreq=1600000000 FreqOverride=0\n"
    "Fan: speed=0\nNV Power Mode: MAXN\n"
)
JETSON_CLOCKS_ORIN_LOCKED = (
    "SOC family:tegra234  Machine:NVIDIA Jetson AGX Orin Developer Kit\nOnline CPUs: 0-11\n"
    + _cpu_line(0, 1, 2201600, 2201600, 2201600, 0)
    + _cpu_line(1, 1, 2201600, 2201600, 2201600, 0)
    + _cpu_line(11, 0, 729600, 2201600, 729600, 0)
    + "GPU MinFreq=1300500000 MaxFreq=1300500000 CurrentFreq=1300500000\n"
    "EMC MinFreq=204000000 MaxFreq=3199000000 CurrentFreq=3199000000 FreqOverride=1\n"
    "NV Power Mode: MAXN\n"
)


def test_tegrastats_rails_of_each_jetpack_format() -> None:
    nano = parse_tegrastats_line(ORIN_NANO_JP6)
    assert nano == {"VDD_IN": 4824.0, "VDD_CPU_GPU_CV": 518.0, "VDD_SOC": 1475.0}
    assert module_power_mw(nano) == (4824.0, "VDD_IN")  # the input includes the other rails
    agx = parse_tegrastats_line(AGX_ORIN_JP5)
    assert set(agx) == {"VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "NC", "VDDQ_VDD2_1V8AO"}
    power, rails = module_power_mw(agx)
    assert power == 2392 + 398 + 2821 + 200
    assert rails == "NC + VDDQ_VDD2_1V8AO + VDD_CPU_CV + VDD_GPU_SOC + VIN_SYS_5V0"
    old = parse_tegrastats_line(NANO_JP4)
    assert old == {"POM_5V_IN": 1281.0, "POM_5V_GPU": 0.0, "POM_5V_CPU": 163.0}  # no RAM/IRAM
    assert module_power_mw(old) == (1281.0, "POM_5V_IN")
    assert parse_tegrastats_line("RAM 2448/30536MB SWAP 0/15268MB (cached 0MB)") == {}


def test_nvpmodel_query_output() -> None:
    assert parse_nvpmodel("NV Power Mode: MAXN\n0\n") == ("MAXN", 0)
    warned = "NVPM WARN: fan mode is not set!\nNV Power Mode: 15W\n1\n"
    assert parse_nvpmodel(warned) == ("15W", 1)
    assert parse_nvpmodel("NV Power Mode: MAXN_SUPER\n") == ("MAXN_SUPER", None)
    with pytest.raises(ValueError, match="no 'NV Power Mode:' line"):
        parse_nvpmodel("NVPM ERROR: failed to read PARAM\n")


def test_clock_locks_from_jetson_clocks_show() -> None:
    assert parse_jetson_clocks(JETSON_CLOCKS_NANO) == {"cpu": False, "gpu": False, "emc": False}
    # cpu11 is offline and not counted; EMC is locked through its frequency override
    locked = parse_jetson_clocks(JETSON_CLOCKS_ORIN_LOCKED)
    assert locked == {"cpu": True, "gpu": True, "emc": True}
    assert JetsonState("MAXN", 0, locked).clocks_locked is True
    assert JetsonState("MAXN", 0, {"cpu": True, "gpu": False}).clocks_locked is False
    assert JetsonState("MAXN", 0, {"cpu": True, "gpu": True}).clocks_locked is None
    assert JetsonState("15W", 1, {}).to_json() == {
        "power_mode": "15W",
        "power_mode_id": 1,
        "clocks_locked": None,
        "clocks": {},
    }


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_clock_locks_from_sysfs(tmp_path: Path) -> None:
    for cpu, low in (("cpu0", 2201600), ("cpu1", 729600)):
        _write(tmp_path / f"devices/system/cpu/{cpu}/cpufreq/scaling_min_freq", f"{low}\n")
        _write(tmp_path / f"devices/system/cpu/{cpu}/cpufreq/scaling_max_freq", "2201600\n")
    _write(tmp_path / "class/devfreq/17000000.gpu/min_freq", "1020000000\n")
    _write(tmp_path / "class/devfreq/17000000.gpu/max_freq", "1020000000\n")
    assert sysfs_clock_locks(tmp_path) == {"cpu": False, "gpu": True}
    _write(tmp_path / "devices/system/cpu/cpu1/cpufreq/scaling_min_freq", "2201600\n")
    assert sysfs_clock_locks(tmp_path) == {"cpu": True, "gpu": True}
    assert sysfs_clock_locks(tmp_path / "elsewhere") == {}


def _rapl_zone(root: Path, zone: str, name: str, energy_uj: int, range_uj: int) -> Path:
    _write(root / zone / "name", f"{name}\n")
    _write(root / zone / "max_energy_range_uj", f"{range_uj}\n")
    return _write(root / zone / "energy_uj", f"{energy_uj}\n")


def test_rapl_sums_package_zones_and_corrects_wraparound(tmp_path: Path) -> None:
    pkg0 = _rapl_zone(tmp_path, "intel-rapl:0", "package-0", 1_000_000, 262_143_328_850)
    core = _rapl_zone(tmp_path, "intel-rapl:0:0", "core", 500, 262_143_328_850)
    pkg1 = _rapl_zone(tmp_path, "intel-rapl:1", "package-1", 262_143_000_000, 262_143_328_850)
    _rapl_zone(tmp_path, "intel-rapl:2", "psys", 7, 262_143_328_850)
    meter = RaplMeter(tmp_path)
    assert meter.covers == "CPU package-0 + package-1"
    meter.start()
    pkg0.write_text("3000000\n")  # +2 J
    core.write_text("999999999\n")  # a sub-zone: part of package-0, never added
    pkg1.write_text("671150\n")  # wrapped: 328850 to the top, then 671150 = +1 J
    assert meter.stop() == pytest.approx(2000 + 1000)  # mJ
    meter.start()
    with pytest.raises(Unavailable, match="did not advance"):
        meter.stop()


def test_rapl_says_why_it_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(Unavailable, match=r"energy \(RAPL\): no .*intel-rapl:\* package zones"):
        RaplMeter(tmp_path / "no-powercap")
    counter = _rapl_zone(tmp_path, "intel-rapl:0", "package-0", 1, 2**32)
    counter.write_text("not a number\n")
    with pytest.raises(Unavailable, match=r"cannot read .*energy_uj"):
        RaplMeter(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_rapl_permission_denied_names_the_file_and_fix(tmp_path: Path) -> None:
    counter = _rapl_zone(tmp_path, "intel-rapl:0", "package-0", 1, 2**32)
    counter.chmod(0)
    with pytest.raises(Unavailable, match=r"permission denied on .*energy_uj .*run as root"):
        RaplMeter(tmp_path)


_RSS_PROBE = """
import json
import numpy as np
from trimformer.runtime.telemetry import RssMeter
meter = RssMeter()
meter.start()
block = np.ones(64 * 1024 * 1024 // 8)  # 64 MB, written so that it is resident
del block
first = meter.stop()
meter.start()
second = meter.stop()
print(json.dumps([first.__dict__, second.__dict__, meter.note]))
"""


def test_rss_of_this_process_and_its_section_peak() -> None:
    """Measured in a fresh process: a long-lived test worker's allocator may keep freed pages."""
    status = Path("/proc/self/status").read_text()
    assert {"VmRSS", "VmHWM"} <= set(parse_proc_status(status))
    out = subprocess.run(
        [sys.executable, "-c", _RSS_PROBE], capture_output=True, text=True, check=True
    ).stdout
    first, second, note = json.loads(out.strip().splitlines()[-1])
    assert first["rss_before_mb"] is not None and first["rss_after_mb"] is not None
    assert first["peak_rss_mb"] >= first["rss_before_mb"] + 60
    assert first["peak_rss_mb"] >= first["rss_after_mb"] + 60  # freed, but the peak remembers it
    if second["peak_scope"] == "section":  # the kernel allowed the reset: the old peak is gone
        assert note is None
        assert second["peak_rss_mb"] < first["peak_rss_mb"] - 50
    else:
        assert note is not None and "lifetime peak" in note


def test_rss_peak_falls_back_to_the_lifetime_peak_and_says_why(tmp_path: Path) -> None:
    meter = RssMeter(clear_refs=tmp_path / "absent" / "clear_refs")
    meter.start()
    figures = meter.stop()
    assert figures.peak_scope == "process"
    assert meter.note is not None and "cannot reset the peak" in meter.note
    assert figures.peak_rss_mb >= figures.rss_after_mb  # type: ignore[operator]


def test_nvml_unavailable_here_says_why() -> None:
    if shutil.which("nvidia-smi") is not None:
        pytest.skip("a GPU driver is present: the gpu-marked test covers NVML")
    with pytest.raises(Unavailable, match=r"NVML\)?: .*(libnvidia-ml|nvidia-ml-py)"):
        NvmlMeter(0)


@pytest.mark.gpu
@pytest.mark.skipif(shutil.which("nvidia-smi") is None, reason="needs an NVIDIA GPU and driver")
def test_nvml_reads_memory_and_energy_on_a_gpu() -> None:
    meter = NvmlMeter(0)
    try:
        used, scope = meter.memory_mb()
        assert used > 0 and scope in {"process", "device"}
        if meter.energy_note is None:
            meter.start()
            time.sleep(1.0)  # idle draw alone moves the counter within a second
            assert meter.stop() > 0
    finally:
        meter.close()


FAKE_TEGRASTATS = """#!/bin/sh
# stands in for tegrastats: logs each start, prints one VDD_IN sample per --interval ms
echo start >> "{log}"
while true; do
  echo "RAM 1/2MB VDD_IN {mw}mW/{mw}mW VDD_CPU_GPU_CV 900mW/900mW VDD_SOC 800mW/800mW"
  sleep 0.02
done
"""


@pytest.fixture
def fake_tegrastats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``tegrastats`` on PATH printing a constant 5 W; returns its start log."""
    bin_dir = tmp_path / "bin"
    log = tmp_path / "starts.log"
    script = _write(bin_dir / "tegrastats", FAKE_TEGRASTATS.format(log=log, mw=5000))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def test_tegrastats_meter_integrates_power_over_the_window(fake_tegrastats: Path) -> None:
    meter = TegrastatsMeter(interval_ms=20)
    outer = time.perf_counter()
    meter.start()
    time.sleep(0.4)
    mj = meter.stop()
    outer = time.perf_counter() - outer
    assert 5000 * 0.3 <= mj <= 5000 * outer  # 5 W for the window (at most the outer time)
    assert meter.covers == "Jetson VDD_IN (tegrastats)"
    meter.start()
    meter.close()  # stopped without a reading: no process is left behind
    assert meter._proc is None


def test_jetson_telemetry_says_what_it_cannot_read(tmp_path: Path) -> None:
    release = _write(tmp_path / "nv_tegra_release", "# R36 (release), REVISION: 4.0\n")
    telemetry = Telemetry(0, tegra_release=release, sys_root=tmp_path / "sys")
    try:
        assert telemetry.jetson is not None
        assert telemetry.jetson.power_mode is None and telemetry.jetson.clocks_locked is None
        text = "\n".join(telemetry.notes)
        assert "Jetson power mode: nvpmodel" in text
        assert "Jetson clock locks: jetson_clocks" in text
        assert "energy (tegrastats): tegrastats is not on PATH" in text
        assert "GPU memory: none of its own on Jetson" in text
        assert telemetry.meters == [] and telemetry.nvml is None
    finally:
        telemetry.close()


def test_desktop_telemetry_notes_one_line_per_unreadable_source(tmp_path: Path) -> None:
    telemetry = Telemetry(None, powercap=tmp_path / "none", tegra_release=tmp_path / "absent")
    try:
        assert telemetry.jetson is None and telemetry.meters == []
        assert len(telemetry.notes) == 1 and telemetry.notes[0].startswith("energy (RAPL): ")
        with telemetry.energy_window() as window:
            pass
        assert window.mj == {} and window.seconds >= 0
    finally:
        telemetry.close()


def test_energy_of_interleaved_graphs_comes_from_each_graphs_own_runs(
    tome_bundle: Path, fake_tegrastats: Path, tmp_path: Path
) -> None:
    release = _write(tmp_path / "nv_tegra_release", "# R36 (release), REVISION: 4.0\n")
    telemetry = Telemetry(None, tegra_release=release, sys_root=tmp_path / "sys")
    sessions = [load(tome_bundle, graph, threads=1) for graph in ("model", "full")]
    feeds = [random_inputs(s.inputs, 1) for s in sessions]
    try:
        with _progress(False) as bar:
            energy = _energy_blocks(telemetry, sessions, feeds, 4, bar)
    finally:
        telemetry.close()
        for session in sessions:
            session.close()
    # reduced (2 runs), full (4), reduced (2): three windows, each a tegrastats of its own
    assert fake_tegrastats.read_text().split() == ["start"] * 3
    assert set(energy[0]) == set(energy[1]) == {"tegrastats"}
    assert energy[0]["tegrastats"] > 0 and energy[1]["tegrastats"] > 0


def test_bench_json_has_the_telemetry_figures(tome_bundle: Path, tmp_path: Path, capsys) -> None:
    out_json = tmp_path / "b.json"
    args = ["bench", str(tome_bundle), "--vs-full", "--runs", "3", "--warmup", "1"]
    try:
        main([*args, "--threads", "1", "--json", str(out_json)])
    except SystemExit as exc:
        assert exc.code == 0
    captured = capsys.readouterr()
    figures = json.loads(out_json.read_text())
    assert figures["peak_rss_scope"] in {"section", "process"}
    assert figures["peak_rss_mb"] >= figures["rss_after_mb"] > figures["rss_before_mb"] > 0
    assert "peak RSS" in captured.out
    energy, full = figures["energy_mj_per_inference"], figures["full_energy_mj_per_inference"]
    assert isinstance(energy, dict) and isinstance(full, dict)
    assert all(v > 0 for v in [*energy.values(), *full.values()])
    assert set(figures["energy_covers"]) == set(energy) | set(full)
    assert "gpu_memory_mb" in figures and "jetson" in figures
    notes = figures["telemetry_notes"]
    for note in notes:  # each said once, on one line, naming its figure
        assert "\n" not in note and note.split(":")[0]
        assert captured.err.count(note) == 1
    if not energy:  # no energy figure here: a note must say why
        assert any(note.startswith("energy") for note in notes)


def test_bench_on_a_stand_in_jetson_reports_energy_mode_and_clocks(
    tome_bundle: Path, fake_tegrastats: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole Jetson path through ``benchmark``: stand-in tools on PATH, a sysfs tree in
    tmp_path; nvpmodel answers, jetson_clocks refuses a non-root user as the real one does."""
    bin_dir = tmp_path / "bin"
    for name, body in (
        ("nvpmodel", 'printf "NVPM WARN: fan mode is not set!\\nNV Power Mode: 15W\\n1\\n"'),
        (
            "jetson_clocks",
            'echo "Error: Run this script(/usr/bin/jetson_clocks) as a root user"; exit 1',
        ),
    ):
        script = _write(bin_dir / name, f"#!/bin/sh\n{body}\n")
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    sys_root = tmp_path / "sys"
    _write(sys_root / "devices/system/cpu/cpu0/cpufreq/scaling_min_freq", "729600\n")
    _write(sys_root / "devices/system/cpu/cpu0/cpufreq/scaling_max_freq", "1510400\n")
    release = _write(tmp_path / "nv_tegra_release", "# R36 (release), REVISION: 4.0\n")
    monkeypatch.setattr(
        bench_module,
        "Telemetry",
        functools.partial(Telemetry, tegra_release=release, sys_root=sys_root),
    )
    result = benchmark(tome_bundle, runs=20, warmup=1, threads=1, progress=False)
    assert result.energy_mj_per_inference["tegrastats"] > 0
    assert result.energy_covers == {"tegrastats": "Jetson VDD_IN (tegrastats)"}
    assert result.jetson == {
        "power_mode": "15W",
        "power_mode_id": 1,
        "clocks_locked": False,
        "clocks": {"cpu": False},
    }
    notes = "\n".join(result.telemetry_notes)
    assert "Jetson clock locks: jetson_clocks --show exited 1: Error: Run this script" in notes
    assert "RAPL" not in notes  # not a source on Jetson, so no note for it
    table = render_table(result)
    assert [c.header for c in table.columns][-1] == "mJ/inf tegrastats"
    assert "nvpmodel 15W, clocks locked: no" in str(table.caption)
