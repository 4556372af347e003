"""Test helpers: a simulated OpenAI-compatible chat-completions server over real HTTP.

Example::

    from nbagent.testing import SimServer, Fault, Reply

    with SimServer(latency=0.05) as srv:
        client = openai.OpenAI(base_url=srv.url, api_key="k")
        srv.inject(Fault("429", retry_after=1))
        srv.script(Reply(text="hello"))

Importing this package starts nothing.
"""

from __future__ import annotations

from .behavior import Behavior, Reply, args_from_schema, default_behavior, estimate_prompt_tokens
from .config import SimConfig
from .faults import FAULT_KINDS, Fault
from .server import SimServer
from .spawn import SpawnedSimServer

__all__ = [
    "FAULT_KINDS",
    "Behavior",
    "Fault",
    "Reply",
    "SimConfig",
    "SimServer",
    "SpawnedSimServer",
    "args_from_schema",
    "default_behavior",
    "estimate_prompt_tokens",
]
