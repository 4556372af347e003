"""What ``Settings.load()`` costs: a typical config file plus environment, the environment alone, and
``Settings.replace()`` with one override (as ``Agent(max_steps=...)`` and ``sim_settings`` do).

Prints the median and p90 of ``--repeats`` calls (each after ``--warmup``), and the time ``import nbagent.config``
takes in a fresh interpreter (median of 5). On a busy machine, compare the lowest medians of several runs.

    python benchmarks/config_load.py [--repeats 2000 --warmup 200]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from nbagent.config import Settings

CONFIG = """
profile = "local"

[profiles.local]
base_url = "http://127.0.0.1:8080/v1"
model = "smollm2"
context_window = 8192

[profiles.openai]
base_url = "https://api.openai.com/v1"
model = "gpt-4o-mini"

[http]
transport = "aiohttp"
max_connections = 500
read_timeout = 60

[retry]
max_attempts = 4
base_delay = 0.25

[limits]
max_steps = 12
max_cost = 0.5
max_wall_time = 300

[prices."my-model"]
input = 1.0
output = 2.0

[context_windows]
"my-model" = 32768

[sandbox]
backend = "auto"
"""

ENV = {"NBAGENT_MODEL": "gpt-4o-mini", "OPENAI_API_KEY": "sk-test", "NBAGENT_LIMITS__MAX_STEPS": "8",
       "NBAGENT_HTTP__READ_TIMEOUT": "30", "NBAGENT_RETRY__MAX_ATTEMPTS": "3"}


def _time(call: Callable[[], object], repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        call()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        out.append(time.perf_counter() - t0)
    return out


def _import_time() -> float:
    code = "import time; t = time.perf_counter(); import nbagent.config; print(time.perf_counter() - t)"
    runs = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
            for _ in range(5)]
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.toml"
        path.write_text(CONFIG)
        empty = str(Path(tmp) / "empty")  # no config file in the config or data directory
        env = {**ENV, "NBAGENT_HOME": empty, "XDG_CONFIG_HOME": empty}
        loaded = Settings.load(env=env)
        cases = {"load(), file + env": _time(lambda: Settings.load(path, env=env), args.repeats, args.warmup),
                 "load(), env only": _time(lambda: Settings.load(env=env), args.repeats, args.warmup),
                 "replace(limits__max_steps=5)": _time(lambda: loaded.replace(limits__max_steps=5), args.repeats,
                                                       args.warmup)}
    for name, times in cases.items():
        times.sort()
        print(f"Settings.{name:<28}  median {statistics.median(times) * 1e6:7.1f} us   "
              f"p90 {times[int(len(times) * 0.9)] * 1e6:7.1f} us   ({len(times)} calls)")
    print(f"import nbagent.config                  median {_import_time() * 1e3:7.2f} ms   (fresh interpreter, 5 runs)")


if __name__ == "__main__":
    main()
