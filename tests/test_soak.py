"""``benchmarks/soak.py`` (issue 19): a short soak with a kill in every iteration after the
first, each followed by a rerun, ends with results equal to the first run's and a clean store;
bad arguments are one line, exit code 2."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.faults]

SOAK = Path(__file__).resolve().parent.parent / "benchmarks" / "soak.py"


def soak(*args, timeout=120):
    return subprocess.run([sys.executable, str(SOAK), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_short_soak_with_kills_reruns_to_equal_results_and_a_clean_store(tmp_path):
    # kill-window 0.5: every kill lands in the first half of the last clean run, so none is missed
    proc = soak("--presets", "default", "--minutes", "0.25", "--kill-prob", "1", "--kill-window", "0.5",
                "--seed", "0", "--dir", str(tmp_path), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    row = out["presets"]["default"]
    assert row["iterations"] >= 2
    assert row["kills"] >= 1 and row["missed_kills"] == 0
    assert row["reruns"] >= row["kills"]
    assert row["diffs"] == 0 and row["first_diff"] is None
    assert row["doctor_problems"] == 0 and row["failures"] == 0
    assert row["peak_rss_mib"] > 0
    assert row["evicted"] >= 1 and row["tmp_entries"] == 0
    assert out["total"]["kills"] == row["kills"] and out["ok"] is True
    assert "killed at" in proc.stderr  # the per-iteration progress lines


@pytest.mark.parametrize("args, message", [(["--presets", "no-such-preset"], "unknown preset 'no-such-preset'"),
                                           (["--minutes", "0"], "--minutes must be > 0")])
def test_bad_arguments_are_one_line_exit_2(args, message):
    proc = soak(*args, timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr
