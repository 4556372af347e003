"""``benchmarks/store.py`` runs end to end on a small load and reports every figure it promises.

No timing is asserted (these machines are shared): the test checks that each part runs, that nothing is
dropped, and that the interleaved comparison measured both modes, so the benchmark cannot rot unnoticed.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_store_benchmark_runs_and_reports_each_part() -> None:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "store.py"), "--events", "3000", "--runs", "30",
           "--concurrency", "10", "--latency", "0.005", "--rounds", "1", "--windows", "4", "--window", "0.8",
           "--settle", "0.3"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    out = p.stdout
    rate = re.search(r"1\. write rate: ([\d,]+) events committed .*dropped (\d+)", out)
    assert rate and int(rate.group(1).replace(",", "")) >= 2990 and rate.group(2) == "0", out
    assert re.search(r"2\. 30 runs at concurrency 10, .* rounds: median [\d.]+ runs/s with the store off", out), out
    inter = re.search(r"3\. interleaved: 4 windows .*: ([\d.]+) runs/s with the store detached, ([\d.]+) runs/s "
                      r"with every event logged", out)
    assert inter and float(inter.group(1)) > 0 and float(inter.group(2)) > 0, out
    assert re.search(r"neighbouring windows on/off: median [-+][\d.]+ %, mean [-+][\d.]+ % \(95 % interval", out), out
    tail = re.search(r"the store's threads ([\d.]+) us per run; (thread|process) writer, dropped (\d+)", out)
    assert tail and tail.group(3) == "0", out
