"""Where nbagent's files are: the config file in the XDG config directory, data in the XDG data directory.

* :func:`config_dir`: ``$XDG_CONFIG_HOME/nbagent``, default ``~/.config/nbagent``, holds ``config.toml``;
* :func:`user_dir`: ``$NBAGENT_HOME``, else ``$XDG_DATA_HOME/nbagent``, default ``~/.local/share/nbagent``,
  holds the response cache and the run store, and (older versions) the config file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["config_dir", "find_config_file", "user_dir"]

log = logging.getLogger("nbagent.config")


def user_dir(env: Mapping[str, str] | None = None) -> Path:
    """nbagent's data directory (cache, run store): ``$NBAGENT_HOME`` or the XDG data dir."""
    env = os.environ if env is None else env
    if env.get("NBAGENT_HOME"):
        return Path(env["NBAGENT_HOME"]).expanduser()
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base).expanduser() / "nbagent"


def config_dir(env: Mapping[str, str] | None = None) -> Path:
    """nbagent's config directory: ``$XDG_CONFIG_HOME/nbagent``, default ``~/.config/nbagent``."""
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / "nbagent"


_noted_old_files: set[Path] = set()  # old-place config files already warned about (once per process)


def find_config_file(env: Mapping[str, str], home: Path) -> Path | None:
    """The config file to read: ``$NBAGENT_CONFIG``, else the one in the config directory, else the one in the
    data directory ``home``, where older versions kept it (read with a one-time warning)."""
    if env.get("NBAGENT_CONFIG"):
        return Path(env["NBAGENT_CONFIG"]).expanduser()
    base = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    new_file = os.path.join(os.path.expanduser(base), "nbagent", "config.toml")  # as config_dir(env), without Paths
    old_file = os.path.join(home, "config.toml")
    if not os.path.isfile(new_file) and not os.path.isfile(old_file):
        return None  # the usual case, kept cheap: two stat calls
    new, old = Path(new_file), Path(old_file)
    if new.is_file():
        if old.is_file() and old != new and old not in _noted_old_files:
            _noted_old_files.add(old)
            log.warning("nbagent: reading the config file %s; %s, the old place, is ignored (delete it)", new, old)
        return new
    if old not in _noted_old_files:
        _noted_old_files.add(old)
        log.warning("nbagent: reading the config file from its old place %s; move it to %s", old, new)
    return old
