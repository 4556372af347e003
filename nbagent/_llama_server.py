"""Child-process entry for llama.cpp's server that exits when its parent process dies.

``python -m nbagent._llama_server --parent-pid PID -- <llama_cpp.server arguments>``
"""

from __future__ import annotations

import os
import sys
import threading
import time


def _watch_parent(pid: int) -> None:
    while True:
        time.sleep(1.0)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os._exit(0)
        except PermissionError:
            pass
        if os.getppid() == 1 and pid != 1:
            os._exit(0)


def main() -> None:
    args = sys.argv[1:]
    if len(args) < 3 or args[0] != "--parent-pid" or args[2] != "--":
        raise SystemExit("usage: python -m nbagent._llama_server --parent-pid PID -- <server args>")
    threading.Thread(target=_watch_parent, args=(int(args[1]),), daemon=True).start()
    sys.argv = ["llama_cpp.server", *args[3:]]
    from llama_cpp.server.__main__ import main as server_main

    server_main()


if __name__ == "__main__":
    main()
