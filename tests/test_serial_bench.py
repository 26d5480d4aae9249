"""Smoke run of the serial benchmark (one second at 115200 baud): every frame arrives."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from edge.bench.serial import main, run

pytestmark = pytest.mark.slow


def test_serial_bench_one_second_no_loss(tmp_path: Path) -> None:
    result = run(1.0, 115200, [sys.executable, "-m", "edge", "run"])
    assert result.sent >= 300  # 11520 bytes/s of 33-byte frames
    assert (result.lost, result.duplicates, result.out_of_order) == (0, 0, 0)
    assert result.received == result.sent
    out = tmp_path / "serial.json"
    assert main(["--duration", "0.5", "--json", str(out)]) == 0
    assert '"lost": 0' in out.read_text()
