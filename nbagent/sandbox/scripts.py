"""Programs the Docker backend runs inside sandbox containers (they need only ``python3``'s core
modules: images with ``python3-minimal`` have no ``shutil``)."""

from __future__ import annotations

__all__ = ["CHECK", "INIT", "KILL_MARKED", "OOM_FILES", "SWEEP", "WRAP"]

# PID 1: reap every child (orphans are re-parented here), exit on SIGTERM.
INIT = """\
import os, signal
def reap(*_):
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
signal.signal(signal.SIGCHLD, reap)
signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
while True:
    signal.pause()
"""

# Run one command: sh -c WRAP sh TIMEOUT PYTHON SWEEP ARGV... ``timeout`` kills the command's process group at
# TIMEOUT. When it ends, a glob of /proc (no fork: it works at the pids limit) looks for any process but
# PID 1 and the shell; only if there is one does the shell exec SWEEP, which kills what the exec left behind.
# Nothing of an exec outlives it, and the common case costs no more than the shell.
WRAP = (
    't=$1; py=$2; s=$3; shift 3; timeout -s KILL "$t" "$@"; rc=$?; '
    'for p in /proc/[0-9]*; do case "${p#/proc/}" in 1|$$) ;; *) exec "$py" -I -S -c "$s" "$rc";; esac; done; '
    'exit "$rc"'
)

# The sweep (argv[1]: the exit status to keep): kill every process carrying this exec's marker and, when no
# other exec is running, every process with no marker at all (it cleared its environment); wait until they
# are gone (a zombie still holds a pid).
SWEEP = """\
import os, sys, time
own = ("NBAGENT_EXEC=" + os.environ.get("NBAGENT_EXEC", "")).encode()
me = os.getpid()
def left():
    mine, others, unmarked = [], False, []
    for p in os.listdir("/proc"):
        if not p.isdigit() or int(p) in (1, me):
            continue
        try:
            with open("/proc/%s/environ" % p, "rb") as f:
                env = f.read().split(b"\\0")
        except OSError:
            continue
        marks = [v for v in env if v.startswith(b"NBAGENT_EXEC=")]
        if not marks:
            unmarked.append(int(p))
        elif marks[0] == own:
            mine.append(int(p))
        else:
            others = True
    return mine if others else mine + unmarked
killed = set()
deadline = time.monotonic() + 3
while time.monotonic() < deadline:
    victims = left()
    if not victims:
        break
    for p in victims:
        try:
            os.kill(p, 9)
            killed.add(p)
        except OSError:
            pass
    time.sleep(0.005)
while killed and time.monotonic() < deadline:
    killed = {p for p in killed if os.path.exists("/proc/%d" % p)}
    time.sleep(0.005)
os._exit(int(sys.argv[1]))
"""

# Kill every process whose environment carries the marker (argv[1]).
KILL_MARKED = """\
import os, sys
marker = ("NBAGENT_EXEC=" + sys.argv[1]).encode()
me = os.getpid()
for p in os.listdir("/proc"):
    if p.isdigit() and int(p) not in (1, me):
        try:
            with open("/proc/%s/environ" % p, "rb") as f:
                if marker in f.read().split(b"\\0"):
                    os.kill(int(p), 9)
        except OSError:
            pass
"""

# The health check of a returned sandbox: kill every process but PID 1, empty the scratch directories
# (argv[1:]), report what could not be done on stdout and exit non-zero.
CHECK = """\
import os, sys, time
me = os.getpid()
def others():
    return [p for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, me)]
deadline = time.monotonic() + 3
while True:
    try:
        os.kill(-1, 9)
    except OSError:
        pass
    left = others()
    if not left:
        break
    if time.monotonic() > deadline:
        print("processes survived the reset: %s" % " ".join(left))
        sys.exit(3)
    time.sleep(0.01)
problems = []
def remove(path):
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            os.chmod(path, 0o700)
            for name in os.listdir(path):
                remove(os.path.join(path, name))
            os.rmdir(path)
        else:
            os.unlink(path)
    except OSError as e:
        problems.append("%s: %s" % (path, e))
for d in sys.argv[1:]:
    if not os.path.isdir(d):
        continue
    for name in os.listdir(d):
        remove(os.path.join(d, name))
    if os.listdir(d) or not os.access(d, os.W_OK | os.X_OK):
        problems.append("%s could not be emptied" % d)
if problems:
    print("; ".join(problems[:5]))
    sys.exit(4)
"""

OOM_FILES = ("/sys/fs/cgroup/memory/memory.oom_control", "/sys/fs/cgroup/memory.events")
