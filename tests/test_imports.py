import subprocess
import sys

import nbagent

HEAVY_UI = ("IPython", "ipywidgets", "plotly", "anywidget")


def test_core_does_not_import_ui_packages():
    code = (
        "import sys, nbagent, nbagent.agent, nbagent.llm, nbagent.events, nbagent.metrics, nbagent.config, "
        "nbagent.testing, nbagent.cli, nbagent.cache, nbagent.local_model, nbagent.metrics.loopmon, "
        "nbagent.sandbox, nbagent.store, nbagent.bench, nbagent.fanout\n"
        f"bad = [m for m in {HEAVY_UI!r} if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_import_nbagent_is_cheap():
    code = "import sys, nbagent; assert 'openai' not in sys.modules and 'nbagent.agent' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_agent_imports_no_heavy_package() -> None:
    """``import nbagent; nbagent.Agent`` loads neither the SDK, the tokenizer, the HTTP stack nor pandas."""
    code = ("import sys, nbagent; nbagent.Agent, nbagent.Runtime, nbagent.tool\n"
            "heavy = ('openai', 'tiktoken', 'pandas', 'aiohttp', 'httpx2', 'pydantic', 'tomllib')\n"
            "loaded = [m for m in heavy if m in sys.modules]\n"
            "assert not loaded, loaded\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_request_on_the_default_transport_never_imports_the_sdk() -> None:
    code = (
        "import asyncio, sys\n"
        "from nbagent.events import EventBus\n"
        "from nbagent.llm import LLMClient, ModelRequest\n"
        "from nbagent.config import Settings\n"
        "from nbagent.testing import SimServer\n"
        "async def main():\n"
        "    with SimServer() as srv:\n"
        "        env = {'NBAGENT_BASE_URL': srv.url, 'NBAGENT_MODEL': 'sim'}\n"
        "        c = LLMClient(Settings.load(env=env), bus=EventBus())\n"
        "        for stream in (False, True):\n"
        "            r = await c.request(ModelRequest(model='sim', messages=[{'role': 'user', 'content': 'hi'}],\n"
        "                                             stream=stream))\n"
        "            assert r.text == 'Answer to: hi', r.text\n"
        "        await c.aclose()\n"
        "asyncio.run(main())\n"
        "assert 'openai' not in sys.modules and 'httpx2' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_public_names_are_complete_and_importable():
    for name in nbagent.__all__:
        assert getattr(nbagent, name) is not None, name
    assert nbagent.__all__ == sorted(nbagent.__all__)


def test_lazy_table_matches_all():
    extra = {"__version__", "load_ipython_extension", "unload_ipython_extension"}
    hidden = {"map", "default_bus"}  # attributes, not exported: ``import *`` must not shadow the builtin map
    assert (set(nbagent._LAZY) - hidden) | extra == set(nbagent.__all__)


def test_star_import_does_not_shadow_builtins():
    namespace: dict = {}
    exec("from nbagent import *", namespace)
    assert "map" not in namespace and callable(namespace["run_many"])
    import builtins

    assert not (set(namespace) - {"__builtins__"}) & set(dir(builtins))


def test_agent_is_importable_without_what_a_run_needs() -> None:
    """``import nbagent; nbagent.Agent`` loads the agent's definition and ``@tool`` only: the run (and asyncio,
    the events, the runtime, the LLM client, the record, the settings) come with the first agent or run."""
    code = ("import sys, nbagent; nbagent.Agent, nbagent.tool\n"
            "ours = sorted(m for m in sys.modules if m == 'nbagent' or m.startswith('nbagent.'))\n"
            "assert ours == ['nbagent', 'nbagent.agent', 'nbagent.agent.loop', 'nbagent.agent.tools'], ours\n"
            "later = ('asyncio', 'aiohttp', 'tiktoken', 'orjson', 'statistics')\n"
            "loaded = [m for m in later if m in sys.modules]\n"
            "assert not loaded, loaded\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_llm_package_loads_the_client_only_when_asked() -> None:
    code = ("import sys\n"
            "from nbagent.llm import ModelRequest, UsageLimits\n"
            "assert 'nbagent.llm.client' not in sys.modules\n"
            "from nbagent.llm import LLMClient\n"
            "assert LLMClient.__module__ == 'nbagent.llm.client'\n"
            "import nbagent.llm as llm\n"
            "assert set(llm.__all__) <= set(dir(llm))\n")
    subprocess.run([sys.executable, "-c", code], check=True)
