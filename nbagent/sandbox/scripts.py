"""Programs the Docker backend runs inside sandbox containers (they need only ``python3``'s core
modules: images with ``python3-minimal`` have no ``shutil``)."""

from __future__ import annotations

__all__ = ["CHECK", "INIT", "KILL_MARKED", "OOM_FILES", "RUNNER"]

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

# Run one command (argv[2:]) in its own process group, killed at argv[1] seconds; when it ends, kill every
# process it left behind (those carrying this exec's marker, and, when no other exec is running, those with
# no marker at all: they cleared their environment), wait until they are gone, and exit with the command's
# status (128 + N when killed by signal N; 137 at the timeout). Nothing of an exec outlives it.
RUNNER = """\
import os, signal, sys, time
limit, argv = float(sys.argv[1]), sys.argv[2:]
own = os.environ.get("NBAGENT_EXEC", "")
me = os.getpid()
pid = os.fork()
if pid == 0:
    os.setpgid(0, 0)
    for name in ("SIGPIPE", "SIGXFSZ"):
        signal.signal(getattr(signal, name), signal.SIG_DFL)
    try:
        os.execvp(argv[0], argv)
    except OSError as e:
        os.write(2, ("%s: %s\\n" % (argv[0], e.strerror)).encode())
    os._exit(127)
try:
    os.setpgid(pid, pid)
except OSError:
    pass
expired = []
def expire(*_):
    expired.append(1)
    try:
        os.killpg(pid, 9)
    except OSError:
        pass
signal.signal(signal.SIGALRM, expire)
signal.setitimer(signal.ITIMER_REAL, limit)
_, status = os.waitpid(pid, 0)
signal.setitimer(signal.ITIMER_REAL, 0)
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
        elif marks[0] == ("NBAGENT_EXEC=" + own).encode():
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
if expired:
    os._exit(137)
os._exit(128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))
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
