"""``benchmarks/gpu_check.py --dry-run``: the prepared GPU script still runs end to end.

The script runs on a lent GPU machine only now and then, as one prepared command; a
change elsewhere (the demo's scorer-only default refused its part (c) once) must show
up here, on the CPU, not as a wasted device run. The dry run is all three parts at tiny
sizes on the CPU; its checks of numbers are the GPU's and may fail there (a 2-step U-Net
finds no lesion), so only the table's completeness is asserted.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_gpu_check_dry_run_prints_every_part_of_its_table(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--work", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    parts = {line.split()[0] for line in lines if line[:1] in "abc" and len(line.split()) > 1}
    assert parts >= {"a", "b", "c"}
    table2 = [line for line in lines if "table2: methods (all)" in line]
    assert len(table2) == 1 and table2[0].split()[-1] == "ok"  # every method has a row
    assert any(line.startswith("c ") and "experiment seconds" in line for line in lines)
    assert lines[-1] == "RESULT gpu_ok 0"  # no CUDA in a dry run
    assert list(tmp_path.iterdir()) == []  # its scratch folder is a temporary one inside
