"""The command line, run as a user would: a subprocess against the simulated server."""

import json
import subprocess
import sys

from nbagent.testing import SimServer


def nbagent(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "NBAGENT_"))}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "nbagent", *args], capture_output=True, text=True, timeout=120,
                          env=full_env)


def test_run_prints_answer_usage_and_timings(sim: SimServer):
    p = nbagent("run", "hello there", "--base-url", sim.url, "--model", "sim")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "Answer to: hello there"
    assert "tokens in" in p.stderr and "ok (stop)" in p.stderr


def test_run_stream_and_json(sim: SimServer):
    p = nbagent("run", "stream this", "--stream", env={"NBAGENT_BASE_URL": sim.url, "NBAGENT_MODEL": "sim"})
    assert p.returncode == 0 and "Answer to: stream this" in p.stdout
    p = nbagent("run", "as json", "--json", "--base-url", sim.url, "--model", "sim")
    data = json.loads(p.stdout)
    assert data["status"] == "ok" and data["input_tokens"] > 0 and data["output"] == "Answer to: as json"


def test_missing_endpoint_is_a_one_line_error():
    p = nbagent("run", "x", env={"NBAGENT_EMBEDDED": "0"})
    assert p.returncode == 2
    assert p.stderr.startswith("nbagent: no model endpoint configured") and "Traceback" not in p.stderr


def test_unreachable_server_fails_cleanly():
    with SimServer() as srv:
        url = srv.url
    p = nbagent("run", "x", "--base-url", url, "--model", "m", env={"NBAGENT_RETRY__MAX_ATTEMPTS": "1"})
    assert p.returncode == 1 and "LLMConnectionError" in p.stderr and "Traceback" not in p.stderr


def test_demo_runs():
    p = nbagent("demo", "--runs", "2", "--latency", "0")
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("6 times 7 is 42.") == 2 and "latency p50" in p.stdout
