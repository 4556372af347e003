"""End to end in a real JupyterLab, in headless Chromium driven by Playwright.

Opens a notebook, runs a ``%%agent`` cell and watches its token counter rise and the dashboard's histogram
draw, clicks Stop on a long run and sees it cancelled, and clicks Approve on a tool call that a policy asks
about and sees that run complete. Screenshots go to ``artifacts/`` at the project root.

Skipped when Chromium, JupyterLab or Playwright is missing, unless ``NBAGENT_REQUIRE_BROWSER=1`` (then it
fails and says what is missing). ``scripts/setup-notebook.sh`` installs them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nbagent.testing import SimServer

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts"
BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-quic"]

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _chromium() -> str | None:
    for candidate in (os.environ.get("NBAGENT_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def _missing() -> list[str]:
    missing = [] if _chromium() else ["Chromium (apt-get install chromium)"]
    for module, what in (("jupyterlab", "JupyterLab"), ("playwright", "Playwright (pip)")):
        try:
            __import__(module)
        except ImportError:
            missing.append(what)
    return missing


@pytest.fixture(scope="module", autouse=True)
def _browser_gate() -> None:
    missing = _missing()
    if not missing:
        return
    message = f"browser end-to-end test needs: {', '.join(missing)}; run scripts/setup-notebook.sh"
    if os.environ.get("NBAGENT_REQUIRE_BROWSER") == "1":
        pytest.fail(message + " (NBAGENT_REQUIRE_BROWSER=1)", pytrace=False)
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


NOTEBOOK_CELLS = [
    "%load_ext nbagent\nimport os\nfrom nbagent import tool\nfrom nbagent.policy import Policy, Rule\n"
    "slow_url, guard_url = os.environ['E2E_SLOW_URL'], os.environ['E2E_GUARD_URL']\n"
    "asks = Policy([Rule('lookup', 'ask')], ask_timeout=120)\n\n"
    "@tool\ndef lookup(key: str) -> str:\n    '''Look a key up.'''\n    return 'v-' + key",
    "%%agent -n quick -t lookup\nWhat does the key say?",
    "%agent dashboard",
    "%%agent -n long -t lookup --max-steps 500 --base-url {slow_url}\nKeep looking until told to stop.",
    "%%agent -n guarded -t lookup --policy asks --base-url {guard_url}\nLook the key up, with permission.",
]


SCALE_CELLS = [
    "%load_ext nbagent\nimport os\nfrom nbagent import tool\nslow_url = os.environ['E2E_SLOW_URL']\n\n"
    "@tool\ndef lookup(key: str) -> str:\n    '''Look a key up.'''\n    return 'v-' + key",
    "%%agent -n grow -t lookup --max-steps 500 --base-url {slow_url}\nKeep looking until told to stop.",
    "for i in range(6):\n    get_ipython().run_cell_magic('agent', f'-n batch-{i} -t lookup', 'Look the key up.')",
    "%agent compare batch-0 batch-1",
    "%%agent -n broken --base-url ftp://nowhere\nThis run cannot start.",
]


BATCH_CELLS = [
    "%load_ext nbagent\nimport nbagent",
    "batch = nbagent.map([f'q{i}' for i in range(24)], concurrency=2, desc='controlled')",
    "r = await batch\nprint('done', r.ok, batch.control.concurrency, batch.control.agent.limits.max_steps)",
]


def _write_notebook(path: Path, sources: list[str] = NOTEBOOK_CELLS) -> None:
    cells: list[dict[str, Any]] = [
        {"cell_type": "code", "execution_count": None, "id": uuid.uuid4().hex[:8], "metadata": {}, "outputs": [],
         "source": src} for src in sources]
    nb = {"cells": cells, "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                      "language": "python"}}, "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(nb))


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """JupyterLab on a free loopback port with a token, its kernels pointed at two simulated servers."""
    root, home = tmp_path_factory.mktemp("lab-root"), tmp_path_factory.mktemp("lab-home")
    fast = SimServer(latency=0.7, tool_calls_per_run=14).start()
    slow = SimServer(latency=0.5, tool_calls_per_run=1000).start()
    guard = SimServer(latency=0.2, tool_calls_per_run=1).start()
    _write_notebook(root / "e2e.ipynb")
    _write_notebook(root / "scale.ipynb", SCALE_CELLS)
    _write_notebook(root / "batch.ipynb", BATCH_CELLS)
    port, token = _free_port(), uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "NBAGENT_", "JUPYTER"))}
    env.update(PYTHONPATH=str(ROOT), NBAGENT_BASE_URL=fast.url, NBAGENT_MODEL="sim", NBAGENT_HOME=str(home / "nb"),
               NBAGENT_LIMITS__STUCK_REPEATS="0", E2E_SLOW_URL=slow.url, E2E_GUARD_URL=guard.url,
               JUPYTER_PLATFORM_DIRS="1",
               JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(home / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"))
    log = (home / "lab.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--ServerApp.port={port}", "--ServerApp.ip=127.0.0.1",
         "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         *(["--allow-root"] if os.geteuid() == 0 else [])],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with opener.open(f"{url}/api/status?token={token}", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"JupyterLab did not start:\n{(home / 'lab.log').read_text()[-3000:]}")
            time.sleep(0.3)
        yield {"url": url, "token": token, "fast": fast, "slow": slow, "guard": guard, "home": home}
    finally:
        _stop(proc)
        log.close()
        fast.stop()
        slow.stop()
        guard.stop()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop JupyterLab and the kernels it started (one process group)."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue


def _run_widget(page: Any, name: str) -> Any:
    return page.locator(f'.nbagent-run:has(.nbagent-header:has-text("{name}"))').first


def _status(run: Any) -> str:
    return str(run.locator(".nbagent-status").first.get_attribute("data-status"))


def _open_notebook(page: Any, lab: dict[str, Any], name: str) -> None:
    """Open notebook ``name``, wait for its kernel to be idle and select its first cell (command mode)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    # a workspace of its own: JupyterLab does not reopen the notebooks of an earlier test beside it
    page.goto(f"{lab['url']}/lab/workspaces/{Path(name).stem}/tree/{name}?token={lab['token']}")
    # JupyterLab sometimes asks which kernel to start although the notebook names one: accept python3
    kernel_dialog = page.locator(".jp-Dialog", has_text="Select Kernel")
    page.add_locator_handler(kernel_dialog, lambda dialog: dialog.locator(".jp-mod-accept").click())
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
    try:
        kernel_dialog.wait_for(timeout=5_000)
        kernel_dialog.locator(".jp-mod-accept").click()
    except PlaywrightTimeout:
        pass
    page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]', timeout=90_000)
    page.locator(".jp-Notebook .jp-Cell .jp-InputPrompt").first.click()


@contextlib.contextmanager
def _lab_page(lab: dict[str, Any], tmp_path: Path, notebook: str, failure_png: str) -> Iterator[Any]:
    """A page of headless Chromium with ``notebook`` open in the lab and its kernel idle; a screenshot goes to
    ``artifacts/failure_png`` when the block fails, and the browser closes after it."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=_chromium(), headless=True, args=BROWSER_FLAGS,
            viewport={"width": 1400, "height": 1800})
        page = context.new_page()
        try:
            _open_notebook(page, lab, notebook)
            yield page
        except BaseException:
            page.screenshot(path=str(ARTIFACTS / failure_png), full_page=True)
            raise
        finally:
            context.close()


def test_jupyterlab_run_widget_dashboard_and_stop(lab: dict[str, Any], tmp_path: Path) -> None:
    with _lab_page(lab, tmp_path, "e2e.ipynb", "e2e-failure.png") as page:

        def run_cell() -> None:  # run the selected cell and select the next one
            page.keyboard.press("Shift+Enter")

        run_cell()  # %load_ext nbagent
        run_cell()  # %%agent -n quick

        # the token counter of the quick run rises while it runs
        quick = _run_widget(page, "quick")
        counter = quick.locator(".nbagent-token-counter").first
        counter.wait_for(timeout=60_000)
        seen: list[int] = []
        deadline = time.monotonic() + 60
        shot = False
        while time.monotonic() < deadline:
            value = int(counter.get_attribute("data-input-tokens") or 0)
            if not seen or value != seen[-1]:
                seen.append(value)
            if len(seen) >= 3 and not shot:
                page.screenshot(path=str(ARTIFACTS / "e2e-1-token-counter-rising.png"), full_page=True)
                shot = True
            if _status(quick) == "ok":
                break
            time.sleep(0.1)
        assert _status(quick) == "ok", seen
        assert len(seen) >= 3 and seen == sorted(seen) and seen[-1] > 0, seen

        # the dashboard's latency histogram has drawn bars
        run_cell()  # %agent dashboard
        run_cell()  # %%agent -n long
        page.wait_for_function(
            "() => [...document.querySelectorAll('.nbagent-histograms .trace.bars path')]"
            ".some(p => (p.getAttribute('d') || '').length > 8)", timeout=30_000)
        page.locator(".nbagent-dashboard").first.screenshot(path=str(ARTIFACTS / "e2e-2-dashboard.png"))

        # Stop cancels the long run
        long_run = _run_widget(page, "long")
        page.wait_for_function(
            "() => [...document.querySelectorAll('.nbagent-run')].some(r => r.innerText.includes('long') &&"
            " r.querySelectorAll('.nbagent-step').length >= 2)", timeout=60_000)
        long_run.locator("button.nbagent-stop").click()
        page.wait_for_function(
            "() => [...document.querySelectorAll('.nbagent-status')].some(s => s.innerText.includes('long') &&"
            " s.dataset.status === 'cancelled')", timeout=60_000)
        page.screenshot(path=str(ARTIFACTS / "e2e-3-stopped.png"), full_page=True)
        # once the widget says cancelled, the run sends nothing more (the slow model answers every 0.5 s,
        # so three answer times without a request means the loop really stopped)
        settled = lab["slow"].requests
        time.sleep(1.5)
        assert lab["slow"].requests == settled

        # a policy asks before the guarded run's tool call: Approve lets it run and the run completes
        page.locator(".jp-Notebook .jp-Cell .jp-InputPrompt").nth(4).click()  # Stop took the focus: select
        run_cell()  # %%agent -n guarded
        guarded = _run_widget(page, "guarded")
        approve = guarded.locator("button.nbagent-approve")
        approve.wait_for(state="visible", timeout=60_000)
        assert "key" in guarded.locator(".nbagent-approval-question").inner_text()
        assert lab["guard"].requests == 1  # the model asked for the tool; nothing more until the answer
        page.screenshot(path=str(ARTIFACTS / "e2e-4-approval.png"), full_page=True)
        approve.click()
        page.wait_for_function(
            "() => [...document.querySelectorAll('.nbagent-status')].some(s => s.innerText.includes('guarded')"
            " && s.dataset.status === 'ok')", timeout=60_000)
        assert lab["guard"].requests == 2
        assert not approve.is_visible()
        # the step list is a widget of its own: its update may be drawn a moment after the status's
        page.wait_for_function(
            "() => [...document.querySelectorAll('.nbagent-run')].some(r => r.innerText.includes('guarded') &&"
            " r.querySelector('.nbagent-steps')?.innerText.includes('approved'))", timeout=30_000)
        assert "approved" in guarded.locator(".nbagent-steps").inner_text()
        page.wait_for_function(
            "() => [...document.querySelectorAll('.nbagent-dashboard-header')]"
            ".some(h => h.innerText.includes('policy decisions'))", timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "e2e-5-approved.png"), full_page=True)


def _box_js(name: str) -> str:
    """A JavaScript expression: the scrolling step list of run ``name``'s widget."""
    return (f"[...document.querySelectorAll('.nbagent-run')].find(r => r.querySelector('.nbagent-header')"
            f"?.innerText.includes('{name}'))?.querySelector('.nbagent-steps .nbagent-scroll')")


def test_jupyterlab_waterfall_scroll_compact_view_and_compare(lab: dict[str, Any], tmp_path: Path) -> None:
    with _lab_page(lab, tmp_path, "scale.ipynb", "e2e-failure-scale.png") as page:
        page.keyboard.press("Shift+Enter")  # %load_ext nbagent
        page.keyboard.press("Shift+Enter")  # %%agent -n grow (a step every half second until stopped)

        # the live waterfall's bars grow while the run is in flight: an open span is drawn to now (dashed),
        # and new spans add bars
        bars = "document.querySelectorAll('.nbagent-live-waterfall rect.nbagent-bar')"
        page.wait_for_function(f"() => [...{bars}].some(b => b.getAttribute('stroke-dasharray'))",
                               timeout=60_000)
        before = page.evaluate(f"() => {bars}.length")
        page.wait_for_function(f"() => {bars}.length > {before}", timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "e2e-6-live-waterfall.png"), full_page=True)

        # the step list follows new steps while it is scrolled to the bottom
        box = _box_js("grow")
        page.wait_for_function(f"() => {{ const b = {box}; return b && b.scrollHeight > b.clientHeight + 80; }}",
                               timeout=60_000)
        steps = f"({box}).querySelectorAll('.nbagent-step').length"
        seen = page.evaluate(f"() => {steps}")
        page.wait_for_function(f"() => {steps} > {seen}", timeout=30_000)
        at_bottom = page.evaluate(f"() => {{ const b = {box}; return b.scrollHeight - b.scrollTop - "
                                  f"b.clientHeight; }}")
        assert at_bottom <= 4, at_bottom
        # scrolled up by the user, it stays where it was put across redraws
        page.evaluate(f"() => {{ const b = {box}; b.scrollTop = 40; b.dispatchEvent(new Event('scroll')); }}")
        text = page.evaluate(f"() => ({box}).innerText")
        page.wait_for_function(f"() => ({box}).innerText !== {json.dumps(text)}", timeout=30_000)
        kept = page.evaluate(f"() => {{ const b = {box}; return [b.scrollTop, b.scrollHeight - b.clientHeight]; }}")
        assert kept[0] == 40 and kept[1] > 44, kept
        page.screenshot(path=str(ARTIFACTS / "e2e-7-scroll-kept.png"), full_page=True)
        _run_widget(page, "grow").locator("button.nbagent-stop").click()
        page.wait_for_function(
            "() => [...document.querySelectorAll('.nbagent-status')].some(s => s.innerText.includes('grow') &&"
            " s.dataset.status === 'cancelled')", timeout=30_000)
        # the run's static summary is in the page (for nbconvert) but hidden next to the drawn widget
        summary = page.locator('.nbagent-summary[data-run="grow"][data-status="cancelled"]')
        summary.wait_for(state="attached", timeout=30_000)
        assert not summary.is_visible()

        # six runs from one cell: one compact view with a line per run, not six run widgets
        page.locator(".jp-Notebook .jp-Cell .jp-InputPrompt").nth(2).click()
        page.keyboard.press("Shift+Enter")
        cell = page.locator(".jp-Notebook .jp-Cell").nth(2)
        compact = cell.locator(".nbagent-compact")
        compact.wait_for(timeout=60_000)
        page.wait_for_function(
            "() => document.querySelectorAll('.nbagent-compact .nbagent-line').length === 6", timeout=30_000)
        assert compact.get_attribute("data-runs") == "6"
        assert cell.locator(".nbagent-run").count() == 0  # the first three runs' widgets were folded in
        assert not cell.locator(".nbagent-compact-static").is_visible()
        page.wait_for_function(
            "() => [...document.querySelectorAll('.nbagent-compact .nbagent-line')].every(l =>"
            " l.dataset.status === 'ok')", timeout=120_000)
        lines = cell.locator(".nbagent-compact .nbagent-line")
        assert all(lines.nth(i).locator("svg.nbagent-spark rect").count() >= 1 for i in range(6))
        height = cell.locator(".jp-Cell-outputWrapper").bounding_box()["height"]
        assert height < 400, height  # six full widgets would take thousands of pixels
        page.screenshot(path=str(ARTIFACTS / "e2e-8-compact.png"), full_page=True)
        lines.nth(4).click()  # a line opens that run's full widget
        _run_widget(page, "batch-4").wait_for(timeout=30_000)
        assert _status(_run_widget(page, "batch-4")) == "ok"
        page.screenshot(path=str(ARTIFACTS / "e2e-9-compact-opened.png"), full_page=True)

        # %agent compare renders its table
        page.locator(".jp-Notebook .jp-Cell .jp-InputPrompt").nth(3).click()
        page.keyboard.press("Shift+Enter")
        table = page.locator(".jp-Notebook .jp-Cell").nth(3).locator(".nbagent-compare table.nbagent-table")
        table.wait_for(timeout=30_000)
        assert "batch-0" in table.inner_text() and "batch-1" in table.inner_text()
        page.screenshot(path=str(ARTIFACTS / "e2e-10-compare.png"), full_page=True)

        # a run that fails says its error once: in the widget, with its static summary hidden beside it
        page.keyboard.press("Shift+Enter")  # the compare cell ran: the broken run's cell is selected
        broken = page.locator(".jp-Notebook .jp-Cell").nth(4)
        broken.locator('.nbagent-status[data-status="error"]').wait_for(timeout=30_000)
        broken.locator('.nbagent-summary[data-status="error"]').wait_for(state="attached", timeout=30_000)
        shown = broken.locator(".jp-Cell-outputWrapper").inner_text()
        assert shown.count("base URL must start with http") == 1, shown
        page.screenshot(path=str(ARTIFACTS / "e2e-11-failed-once.png"), full_page=True)
        # nbagent's own drawing is never named as what blocked the loop
        assert "widgets.py" not in page.locator(".jp-Notebook").inner_text()


def test_jupyterlab_batch_controls_pause_resume_and_concurrency(lab: dict[str, Any], tmp_path: Path) -> None:
    """The controls under nbagent.map's progress line, used in the browser: Pause holds every new model call,
    a typed concurrency and limit reach the batch, Resume lets it finish, and the controls go grey at its end."""
    fast = lab["fast"]  # the default endpoint: 0.7 s per answer, one model call per run (no tools)
    with _lab_page(lab, tmp_path, "batch.ipynb", "e2e-failure-batch.png") as page:
        page.keyboard.press("Shift+Enter")  # %load_ext nbagent
        page.keyboard.press("Shift+Enter")  # batch = nbagent.map(...): returns at once
        controls = page.locator(".nbagent-batch-controls").first
        controls.wait_for(timeout=60_000)
        pause = controls.locator(".nbagent-batch-pause")
        before = fast.requests
        deadline = time.monotonic() + 60
        while fast.requests < before + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fast.requests >= before + 2
        pause.click()
        page.wait_for_function("() => document.querySelector('.nbagent-batch-pause')?.innerText.includes('Resume')",
                               timeout=30_000)  # the kernel paused the batch and drew it back
        deadline = time.monotonic() + 30
        while fast.stats()["in_flight"] and time.monotonic() < deadline:
            time.sleep(0.05)
        held = fast.requests
        time.sleep(1.5)  # two answer times: a new call would have started by now if the pause let it
        assert fast.requests == held
        page.screenshot(path=str(ARTIFACTS / "e2e-12-batch-paused.png"), full_page=True)
        for css, value in (("nbagent-batch-concurrency", "4"), ("nbagent-batch-max-steps", "3")):
            field = controls.locator(f".{css} input").first
            field.fill(value)
            field.press("Enter")
        pause.click()  # Resume
        page.wait_for_function(
            "() => document.querySelector('.nbagent-batch-pause')?.disabled === true", timeout=120_000)
        # each widget is its own model: the status line's update may be drawn a moment after the button's
        page.wait_for_function(
            "() => document.querySelector('.nbagent-batch-controls')?.innerText.includes('finished')", timeout=30_000)
        assert "finished" in controls.inner_text()
        page.screenshot(path=str(ARTIFACTS / "e2e-13-batch-finished.png"), full_page=True)
        page.locator(".jp-Notebook .jp-Cell .jp-InputPrompt").nth(2).click()  # the fields took the focus
        page.keyboard.press("Shift+Enter")  # r = await batch; print(...)
        out = page.locator(".jp-Notebook .jp-Cell").nth(2).locator(".jp-OutputArea-output")
        out.first.wait_for(timeout=60_000)
        assert out.first.inner_text().split() == ["done", "24", "4", "3"]
