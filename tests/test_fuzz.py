"""A short coverage-guided fuzz run of each parser of untrusted bytes (bench/fuzz.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from serverflow_testkit import missing

FUZZ = Path(__file__).resolve().parent.parent / "bench" / "fuzz.py"


def fuzz(tmp_path: Path, *args: str) -> tuple[int, list[dict[str, object]]]:
    try:
        import atheris  # noqa: F401
    except ImportError:
        missing("atheris", "pip install atheris (in the test extra)")
    proc = subprocess.run(
        [sys.executable, str(FUZZ), "--json", "--out", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("[")]
    assert lines, proc.stdout + proc.stderr
    return proc.returncode, json.loads(lines[-1])


@pytest.mark.slow
def test_each_parser_survives_a_short_fuzz_run(tmp_path: Path) -> None:
    code, results = fuzz(tmp_path, "--seconds", "4")
    assert [r["target"] for r in results] == ["protocol", "desired", "hub"]
    for result in results:
        assert result["inputs"] > 0, result  # type: ignore[operator]
        assert not result["crashed"], (tmp_path / f"{result['target']}.log").read_text()
    assert code == 0


def test_a_crash_is_reported_with_its_input(tmp_path: Path) -> None:
    code, (result,) = fuzz(tmp_path, "--target", "canary", "--seconds", "20")
    assert code == 1
    assert result["crashed"]
    (artifact,) = result["artifacts"]  # type: ignore[misc]
    assert Path(str(artifact)).read_bytes().startswith(b"!")  # the input that hit it
