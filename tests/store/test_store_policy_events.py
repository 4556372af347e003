"""Policy decisions in the run store: they load back as typed events, even where nbagent.policy was never imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from nbagent.events import EventBus, RunStarted
from nbagent.policy import PolicyDecided
from nbagent.store import RunStore

PROJECT = Path(__file__).resolve().parents[2]
FIELDS = {"tool": "shell", "action": "deny", "decided_by": "rule", "reason": "rm -rf is denied", "seconds": 0.0025,
          "cached": True}


def test_policy_decided_loads_back_typed(tmp_path: Path) -> None:
    db = tmp_path / "policy.db"
    s = RunStore(db)
    bus = EventBus()
    s.attach(bus)
    bus.emit(RunStarted(run_id="r1", name="guarded"))
    bus.emit(PolicyDecided(run_id="r1", **FIELDS))  # type: ignore[arg-type]
    events = s.load("r1").events
    s.close()
    decided = [e for e in events if isinstance(e, PolicyDecided)]
    assert len(decided) == 1 and decided[0].run_id == "r1"
    assert {k: getattr(decided[0], k) for k in FIELDS} == FIELDS

    code = (
        "import json, sys\n"
        "from nbagent.store import RunStore\n"
        "assert 'nbagent.policy' not in sys.modules\n"
        f"s = RunStore({str(db)!r}, writer='thread')\n"
        "ev = s.events('r1', kinds=['policy_decided'], typed=True)[0]\n"
        "s.close()\n"
        "print(json.dumps([type(ev).__module__, type(ev).__name__, {k: getattr(ev, k) for k in %r}]))\n" % list(FIELDS)
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=PROJECT, capture_output=True, text=True)
    assert json.loads(out.stdout) == ["nbagent.policy", "PolicyDecided", FIELDS]
