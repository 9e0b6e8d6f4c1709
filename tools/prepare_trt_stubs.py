"""Copy the installed ``tensorrt-stubs`` into a folder mypy can use, repairing their syntax.

``tensorrt-stubs`` (10.8 to 10.13) ships ``tensorrt/__init__.pyi`` and
``tensorrt_bindings/tensorrt.pyi`` without a ``py.typed`` marker (so mypy skips them as untyped)
and with generator slips mypy cannot parse: parameters named ``in`` (a keyword) and a parameter
without a default after defaulted ones. This copies both packages into DEST, renames ``in`` to
``in_`` and gives such parameters ``= ...``; point mypy at DEST with ``MYPYPATH=DEST``:

    pip install --no-deps tensorrt-stubs mypy
    python tools/prepare_trt_stubs.py /tmp/trt-stubs
    MYPYPATH=/tmp/trt-stubs mypy  # files and settings: mypy.ini
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
import sys
from pathlib import Path

PACKAGES = ("tensorrt", "tensorrt_bindings")
_KEYWORD_PARAM = re.compile(r"([(,]\s*)in(\s*:)")
_DEF = re.compile(r"^(\s*def \w+\()(.*)(\)\s*->.*)$")


def _split_params(params: str) -> list[str]:
    """Split a parameter list at top-level commas."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(params):
        if char in "[(":
            depth += 1
        elif char in "])":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(params[start:i])
            start = i + 1
    parts.append(params[start:])
    return parts


def repair_line(line: str) -> str:
    """One stub line with keyword parameter names and default ordering repaired."""
    line = _KEYWORD_PARAM.sub(r"\1in_\2", line)
    match = _DEF.match(line)
    if match is None or "=" not in match[2]:
        return line
    params, seen_default = [], False
    for param in _split_params(match[2]):
        bare = param.strip()
        if "=" in bare:
            seen_default = True
        elif seen_default and bare and not bare.startswith("*"):
            param = f"{param} = ..."
        params.append(param)
    return f"{match[1]}{','.join(params)}{match[3]}"


def stub_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{package} stubs are not installed: pip install --no-deps tensorrt-stubs")
    return Path(next(iter(spec.submodule_search_locations)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path)
    dest = parser.parse_args().dest
    for package in PACKAGES:
        source, target = stub_dir(package), dest / package
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        for stub in source.glob("*.pyi"):
            lines = stub.read_text().splitlines(keepends=True)
            (target / stub.name).write_text("".join(repair_line(line) for line in lines))
    print(f"repaired TensorRT stubs in {dest}; run mypy with MYPYPATH={dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
