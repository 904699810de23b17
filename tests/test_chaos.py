"""The chaos suite, short: a few hundred mixed runs through four real workers while workers are
SIGKILLed, backends terminated, PostgreSQL restarted and one worker cut off longer than its
lease; then no violation of pgqueue's guarantees in the recorded history (benchmarks/chaos.py
says what is checked; run it there at full scale)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

from chaos import QUICK_FAULTS, Config, run

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(300)]


def test_no_violation_under_injected_faults(tmp_path: Path) -> None:
    report = run(Config(runs=600, fault_seconds=30, drain_timeout=120, faults=QUICK_FAULTS), tmp_path)
    print(report.text())
    # every kind of fault happened, so the checks below were made under all of them
    kinds = " ".join(report.faults)
    for kind in ("SIGKILL", "backend terminated", "postgres restarted", "cut off"):
        assert kind in kinds, report.text()
    assert report.attempts["crashed"] > 0, report.text()
    assert report.info["attempts of the proxied worker rescued from it"] > 0, report.text()  # a zombie
    assert report.violations == [], report.text()
