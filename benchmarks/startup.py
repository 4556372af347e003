"""Start-up: the import time of ``import nbagent; nbagent.Agent``, and a fresh process's first run.

Each figure is the median of several fresh interpreters (nothing cached in the process, the byte code cached
on disk as usual):

1. import: ``import nbagent; nbagent.Agent`` timed inside the process, and the whole process's wall time
   (``python -c "import nbagent; nbagent.Agent"``, interpreter start-up included) next to a bare ``python -c
   pass``.
2. first run: a fresh process imports nbagent, builds a runtime and an agent with one tool, and runs once
   (prompt -> tool call -> answer) against the simulated server, already running in a process of its own;
   the time from before the import to the result, split into import, construction and the run itself.

``--compare PATH`` runs the same measurements with the nbagent found at ``PATH`` (a checkout of another
version, e.g. ``git worktree add /tmp/before main``) and prints both with their ratio, so a change's effect
on start-up reads as before vs after: the first run must not grow by more than the import time saved.

    python benchmarks/startup.py [--n 11] [--compare /tmp/before]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from nbagent.testing import SimServer

ROOT = Path(__file__).resolve().parent.parent
TARGET_IMPORT_MS = 150.0  # the whole process, interpreter start-up included

IMPORT_CODE = """
import time
t0 = time.perf_counter()
import nbagent
nbagent.Agent
print(time.perf_counter() - t0)
"""

FIRST_RUN_CODE = """
import asyncio, json, sys, time
t0 = time.perf_counter()
import nbagent
from nbagent import Agent, Runtime, Settings, tool
t_import = time.perf_counter()

@tool
def lookup(key: str) -> str:
    '''Look a key up.'''
    return "value-of-" + key

async def main():
    t1 = time.perf_counter()
    settings = Settings.load(env={"NBAGENT_BASE_URL": sys.argv[1], "NBAGENT_MODEL": "sim",
                                  "NBAGENT_HOME": "/nonexistent"})
    async with Runtime(settings) as rt:
        agent = Agent("sim", [lookup], runtime=rt)
        t2 = time.perf_counter()
        result = await agent.run("task 1")
        t3 = time.perf_counter()
        assert result.ok, result.stop_reason
    return t1, t2, t3

t1, t2, t3 = asyncio.run(main())
print(json.dumps({"import": t_import - t0, "construct": t2 - t1, "run": t3 - t2, "total": t3 - t0}))
"""


def _env(path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(path) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _python(code: str, path: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=_env(path),
                          cwd=path, check=True)
    return done.stdout.strip()


def _wall(code: str, path: Path) -> float:
    import time

    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=_env(path), cwd=path, check=True)
    return time.perf_counter() - t0


def measure(path: Path, url: str, n: int) -> dict[str, float]:
    _python(IMPORT_CODE, path)  # byte code compiled and cached once, as after an install
    imports = [float(_python(IMPORT_CODE, path)) for _ in range(n)]
    process = [_wall("import nbagent; nbagent.Agent", path) for _ in range(n)]
    bare = [_wall("pass", path) for _ in range(n)]
    runs = [json.loads(_python(FIRST_RUN_CODE, path, url)) for _ in range(n)]
    med = statistics.median
    return {"import_ms": med(imports) * 1000, "process_ms": med(process) * 1000, "python_ms": med(bare) * 1000,
            "first_import_ms": med(r["import"] for r in runs) * 1000,
            "construct_ms": med(r["construct"] for r in runs) * 1000,
            "first_run_ms": med(r["run"] for r in runs) * 1000, "total_ms": med(r["total"] for r in runs) * 1000}


def show(name: str, m: dict[str, float]) -> None:
    print(f"  {name:<8} import nbagent; nbagent.Agent {m['import_ms']:6.1f} ms in process, "
          f"{m['process_ms']:6.1f} ms as a process (python alone {m['python_ms']:.1f} ms)")
    print(f"  {'':<8} fresh process to a first result {m['total_ms']:6.1f} ms = import {m['first_import_ms']:.1f} "
          f"+ runtime and agent {m['construct_ms']:.1f} + first run {m['first_run_ms']:.1f} ms")


def main(args: argparse.Namespace) -> None:
    with SimServer.spawn(latency=0.0, tool_calls_per_run=1) as srv:
        print(f"Start-up: medians of {args.n} fresh processes each")
        now = measure(ROOT, srv.url, args.n)
        show("this", now)
        print(f"RESULT import_process_ms={now['process_ms']:.1f} (target <= {TARGET_IMPORT_MS:.0f}) "
              f"import_ms={now['import_ms']:.1f} first_result_ms={now['total_ms']:.1f} "
              f"first_run_ms={now['first_run_ms']:.1f}")
        if args.compare:
            before = measure(Path(args.compare).resolve(), srv.url, args.n)
            show("compare", before)
            saved = before["import_ms"] - now["import_ms"]
            grown = (now["construct_ms"] + now["first_run_ms"]) - (before["construct_ms"] + before["first_run_ms"])
            print(f"RESULT import this/compare={now['import_ms'] / before['import_ms']:.2f}x "
                  f"(saved {saved:.1f} ms); construction + first run grew {grown:+.1f} ms "
                  f"(must be <= the import time saved); first result this/compare="
                  f"{now['total_ms'] / before['total_ms']:.2f}x")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=11, help="fresh processes per figure (the median is shown)")
    p.add_argument("--compare", default=None, help="a checkout of another nbagent version to measure the same way")
    main(p.parse_args())
