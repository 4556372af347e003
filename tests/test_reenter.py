"""Waiting from sync code inside a running loop (what ``%agent wait`` does in a kernel).

Run in a child process: nest-asyncio2 patches the loop's class for the whole process.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import asyncio
    from nbagent.reenter import wait_in_running_loop

    async def main():
        loop = asyncio.get_running_loop()
        ran = []

        async def answer():
            await asyncio.sleep(0.01)
            return 42

        def wait_from_sync_code():
            ran.append(wait_in_running_loop(loop, answer(), what="waiting", instead="await"))

        loop.call_soon(wait_from_sync_code)
        for i in range(5):
            loop.call_soon(ran.append, i)
        await asyncio.sleep(0.1)
        print(ran)
        ran.clear()
        loop.call_soon(wait_from_sync_code)  # again, now that the loop is patched
        loop.call_soon(ran.append, "after")
        await asyncio.sleep(0.1)
        print(ran)

    asyncio.run(main())
""")


def test_the_first_reentry_may_run_handles_the_loop_had_already_counted() -> None:
    # asyncio counts an iteration's ready handles, then pops that many; the first nested run (before
    # nest-asyncio2 patched the loop) runs some of them itself, and the outer pop must not fail
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines() == ["[0, 1, 2, 3, 4, 42]", "['after', 42]"]
