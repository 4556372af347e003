import pytest

from nbagent.config import Settings, user_dir
from nbagent.errors import ConfigError


def test_precedence_defaults_file_env_args(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        """
profile = "local"
[profiles.local]
base_url = "http://127.0.0.1:9999/v1"
model = "file-model"
context_window = 4096
[limits]
max_steps = 7
max_cost = 0.25
[http]
read_timeout = 11
[prices."file-model"]
input = 1.0
output = 3.0
"""
    )
    env = {"NBAGENT_CONFIG": str(cfg)}
    s = Settings.load(env=env)
    assert s.limits.max_steps == 7 and s.limits.max_cost == 0.25 and s.http.read_timeout == 11.0
    ep = s.endpoint()
    assert (ep.base_url, ep.model, ep.context_window) == ("http://127.0.0.1:9999/v1", "file-model", 4096)
    assert s.price_for("file-model").output == 3.0

    env.update({"NBAGENT_LIMITS__MAX_STEPS": "3", "NBAGENT_MODEL": "env-model", "OPENAI_BASE_URL": "http://e/v1"})
    s = Settings.load(env=env)
    assert s.limits.max_steps == 3
    assert s.endpoint().model == "env-model" and s.endpoint().base_url == "http://e/v1"

    s = Settings.load(env=env, limits__max_steps=2, model="arg-model")
    assert s.limits.max_steps == 2 and s.endpoint().model == "arg-model"
    assert s.endpoint(model="call-model").model == "call-model"


def test_nbagent_vars_win_over_openai_vars():
    s = Settings.load(env={"OPENAI_BASE_URL": "http://a/v1", "NBAGENT_BASE_URL": "http://b/v1",
                           "OPENAI_API_KEY": "ka", "NBAGENT_API_KEY": "kb", "NBAGENT_MODEL": "m"})
    ep = s.endpoint()
    assert ep.base_url == "http://b/v1" and ep.api_key == "kb"


def test_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="no model endpoint configured"):
        Settings.load(env={"NBAGENT_MODEL": "m"}).endpoint()
    with pytest.raises(ConfigError, match="missing API key"):
        Settings.load(env={"OPENAI_BASE_URL": "https://api.openai.com/v1", "NBAGENT_MODEL": "m"}).endpoint()
    with pytest.raises(ConfigError, match="unknown profile 'nope'"):
        Settings.load(env={"NBAGENT_PROFILE": "nope"}).endpoint()
    with pytest.raises(ConfigError, match="must start with http"):
        Settings.load(env={"NBAGENT_BASE_URL": "localhost:8080", "NBAGENT_MODEL": "m"}).endpoint()
    with pytest.raises(ConfigError, match="no model name"):
        Settings.load(env={"NBAGENT_BASE_URL": "http://x/v1"}).endpoint()
    bad = tmp_path / "bad.toml"
    bad.write_text("[limits\nmax_steps=1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Settings.load(bad, env={})
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[limits]\nmax_stepz = 1\n")
    with pytest.raises(ConfigError, match="unknown setting 'max_stepz'"):
        Settings.load(unknown, env={})
    with pytest.raises(ConfigError, match="expected int"):
        Settings.load(env={"NBAGENT_LIMITS__MAX_STEPS": "many"})


def test_local_servers_need_no_key_and_windows_match_snapshots():
    s = Settings.load(env={"NBAGENT_BASE_URL": "http://127.0.0.1:1/v1", "NBAGENT_MODEL": "gpt-4o-2024-08-06"})
    ep = s.endpoint()
    assert ep.api_key and ep.context_window == 128_000
    assert s.price_for("gpt-4o-mini-2024-07-18").input == 0.15


def test_user_dir_env_override(tmp_path):
    assert user_dir({"NBAGENT_HOME": str(tmp_path)}) == tmp_path
    assert user_dir({"XDG_DATA_HOME": str(tmp_path)}) == tmp_path / "nbagent"
