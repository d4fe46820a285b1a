"""benchmarks/bench_memmap.py runs end to end in its quick mode: a memory-mapped table fitted
by the estimator and by the command line, in fresh processes, within the memory bound."""

import json
from pathlib import Path

import pytest

from script_runner import run_script

pytestmark = pytest.mark.slow  # runs scripts or processes; .ci/run includes it

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_memmap.py"


def test_bench_memmap_quick(tmp_path):
    run_script(SCRIPT, "--quick", "--out", tmp_path, "--dir", tmp_path / "tables")
    report = json.loads((tmp_path / "bench_memmap_quick.json").read_text())
    (row,) = report["rows"]
    assert row["n_rows"] == 100_000 and row["table_MB"] == pytest.approx(100_000 * 64 / 2**20)
    assert row["api"]["n_rows"] == 100_000 and row["api"]["iterations"] > 0
    assert row["api"]["timed_steps"] <= 5 and row["api"]["seconds_per_step"] > 0
    assert row["within_bound"] == (max(row["api"]["peak_rss_MB"], row["cli"]["peak_rss_MB"])
                                   <= row["table_MB"] + 1024)
    assert (tmp_path / "tables" / "cli_100000" / "model.pt").stat().st_size > 0
    assert "| 100,000 |" in (tmp_path / "bench_memmap_quick.md").read_text()
