import logging
from pathlib import Path

import pytest

from nbagent.config import Settings, config_dir, user_dir
from nbagent.errors import ConfigError, InvalidSetting


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
    with pytest.raises(ConfigError, match="http:// or https://"):
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
    with pytest.raises(ConfigError, match="must be a whole number >= 1"):
        Settings.load(env={"NBAGENT_LIMITS__MAX_STEPS": "many"})


def test_local_servers_need_no_key_and_windows_match_snapshots():
    s = Settings.load(env={"NBAGENT_BASE_URL": "http://127.0.0.1:1/v1", "NBAGENT_MODEL": "gpt-4o-2024-08-06"})
    ep = s.endpoint()
    assert ep.api_key and ep.context_window == 128_000
    assert s.price_for("gpt-4o-mini-2024-07-18").input == 0.15


def test_user_dir_env_override(tmp_path):
    assert user_dir({"NBAGENT_HOME": str(tmp_path)}) == tmp_path
    assert user_dir({"XDG_DATA_HOME": str(tmp_path)}) == tmp_path / "nbagent"


# --- validation -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("var", "value", "key", "allowed"),
    [
        ("NBAGENT_HTTP__TRANSPORT", "foo", "http.transport", "one of 'direct', 'sdk', 'aiohttp', 'httpx'"),
        ("NBAGENT_LIMITS__MAX_STEPS", "-1", "limits.max_steps", "a whole number >= 1"),
        ("NBAGENT_LIMITS__MAX_STEPS", "2.5", "limits.max_steps", "a whole number >= 1"),
        ("NBAGENT_HTTP__READ_TIMEOUT", "nan", "http.read_timeout", "a finite number > 0"),
        ("NBAGENT_HTTP__READ_TIMEOUT", "0", "http.read_timeout", "a finite number > 0"),
        ("NBAGENT_LIMITS__MAX_COST", "inf", "limits.max_cost", "a finite number >= 0, or none"),
        ("NBAGENT_RETRY__BASE_DELAY", "-0.5", "retry.base_delay", "a finite number >= 0"),
        ("NBAGENT_STREAM", "maybe", "stream", "true or false"),
        ("OPENAI_BASE_URL", "localhost:8080", "base_url", "a URL starting with http:// or https://"),
    ],
)
def test_bad_environment_values_name_the_key_the_variable_and_what_is_allowed(var, value, key, allowed):
    with pytest.raises(InvalidSetting) as info:
        Settings.load(env={var: value})
    err = info.value
    assert isinstance(err, ConfigError)
    assert (err.key, err.source, err.allowed) == (key, f"from environment variable {var}", allowed)
    assert str(err) == f"{key} = {value!r} (from environment variable {var}): must be {allowed}"


def test_bad_file_values_name_the_file(tmp_path):
    cfg = tmp_path / "config.toml"
    for body, key in [("[http]\nread_timeout = nan\n", "http.read_timeout"),
                      ("[http]\nconnect_timeout = inf\n", "http.connect_timeout"),
                      ("[limits]\nmax_steps = true\n", "limits.max_steps"),
                      ("[profiles.p]\ncontext_window = 0\n", "profiles.p.context_window"),
                      ('[prices."m"]\ninput = -1\n', 'prices."m".input'),
                      ('[context_windows]\n"m" = 0\n', 'context_windows."m"'),
                      ("stream = 2\n", "stream"),
                      ("model = 7\n", "model")]:
        cfg.write_text(body)
        with pytest.raises(InvalidSetting) as info:
            Settings.load(cfg, env={})
        assert info.value.key == key and info.value.source == f"in {cfg}", body
        assert "\n" not in str(info.value)


def test_bad_arguments_and_assignments_are_refused_and_change_nothing():
    with pytest.raises(InvalidSetting, match=r"http.transport = 'foo' \(from argument http__transport\)"):
        Settings.load(env={}, http__transport="foo")
    with pytest.raises(InvalidSetting, match=r"from argument limits"):
        Settings.load(env={}, limits={"max_wall_time": float("nan")})
    with pytest.raises(InvalidSetting, match=r"context_window = -5 \(from argument context_window\)"):
        Settings.load(env={}, context_window=-5)
    s = Settings.load(env={})
    with pytest.raises(InvalidSetting, match=r"limits.max_steps = 0 \(set in code\)"):
        s.limits.max_steps = 0
    with pytest.raises(InvalidSetting, match="finite"):
        s.http.read_timeout = float("inf")
    assert s.limits.max_steps == 20 and s.http.read_timeout == 120.0


def test_good_edge_values_are_accepted_and_normalised():
    s = Settings.load(env={"NBAGENT_HTTP__TRANSPORT": " HTTPX ", "NBAGENT_LIMITS__STUCK_REPEATS": "0",
                           "NBAGENT_LIMITS__MAX_COST": "0", "NBAGENT_LIMITS__MAX_STEPS": "4.0",
                           "NBAGENT_LIMITS__MAX_REQUESTS": "none", "NBAGENT_STREAM": "on",
                           "NBAGENT_RETRY__BUDGET_RATIO": "0"})
    assert s.http.transport == "httpx" and s.limits.stuck_repeats == 0 and s.limits.max_cost == 0.0
    assert s.limits.max_steps == 4 and isinstance(s.limits.max_steps, int)
    assert s.limits.max_requests is None and s.stream is True and s.retry.budget_ratio == 0.0
    assert s.replace(limits__max_wall_time=2).limits.max_wall_time == 2.0


def test_unknown_section_in_the_environment_names_the_variable():
    with pytest.raises(ConfigError, match="NBAGENT_LIMIT__MAX_STEPS"):
        Settings.load(env={"NBAGENT_LIMIT__MAX_STEPS": "3"})


# --- secrets in reprs -------------------------------------------------------------------------------------

KEY = "sk-proj-abcdefghijklmnopqrstuvwxyz0123"


def test_reprs_never_show_api_keys_or_auth_values(tmp_path):
    from IPython.lib.pretty import pretty

    cfg = tmp_path / "config.toml"
    cfg.write_text('[profiles.p]\nbase_url = "http://x/v1"\napi_key = "profile-secret-123"\n'
                   '[sandbox]\nheaders = { Authorization = "Bearer tok-abcdef123456", Accept = "json" }\n')
    s = Settings.load(cfg, env={"NBAGENT_API_KEY": KEY, "NBAGENT_MODEL": "m"})
    ep = s.endpoint()
    assert ep.api_key == KEY and s.profiles["p"].api_key == "profile-secret-123"  # still usable
    for obj in (s, ep, s.profiles["p"]):
        for shown in (repr(obj), str(obj), pretty(obj)):
            assert KEY not in shown and "profile-secret-123" not in shown and "tok-abcdef123456" not in shown
            assert "[REDACTED]" in shown
    assert "'Accept': 'json'" in repr(s) and "model='m'" in repr(ep)
    assert "api_key=None" in repr(Settings.load(env={}))


def test_a_bad_secret_is_not_echoed_in_the_error(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text("api_key = 12345678901234\n")
    with pytest.raises(InvalidSetting) as info:
        Settings.load(cfg, env={})
    assert "12345678901234" not in str(info.value) and "api_key" in str(info.value)


# --- where the file is ------------------------------------------------------------------------------------


def test_config_file_in_the_xdg_config_directory(tmp_path):
    (tmp_path / "xdg" / "nbagent").mkdir(parents=True)
    (tmp_path / "xdg" / "nbagent" / "config.toml").write_text("[limits]\nmax_steps = 6\n")
    env = {"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "NBAGENT_HOME": str(tmp_path / "data")}
    s = Settings.load(env=env)
    assert s.limits.max_steps == 6 and s.config_path == tmp_path / "xdg" / "nbagent" / "config.toml"
    assert s.home == tmp_path / "data"  # data stays in the data directory
    assert config_dir({"HOME": "/h"}) == Path.home() / ".config" / "nbagent"
    override = tmp_path / "other.toml"
    override.write_text("[limits]\nmax_steps = 9\n")
    assert Settings.load(env={**env, "NBAGENT_CONFIG": str(override)}).limits.max_steps == 9


def test_the_old_place_is_still_read_with_a_one_time_warning(tmp_path, caplog):
    data = tmp_path / "data"
    data.mkdir()
    (data / "config.toml").write_text("[limits]\nmax_steps = 5\n")
    env = {"XDG_CONFIG_HOME": str(tmp_path / "xdg"), "NBAGENT_HOME": str(data)}
    with caplog.at_level(logging.WARNING, logger="nbagent.config"):
        assert Settings.load(env=env).limits.max_steps == 5
        assert Settings.load(env=env).limits.max_steps == 5
    notes = [r.getMessage() for r in caplog.records if r.name == "nbagent.config"]
    assert len(notes) == 1 and str(data / "config.toml") in notes[0]
    assert str(tmp_path / "xdg" / "nbagent" / "config.toml") in notes[0]

    (tmp_path / "xdg" / "nbagent").mkdir(parents=True)
    (tmp_path / "xdg" / "nbagent" / "config.toml").write_text("[limits]\nmax_steps = 8\n")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="nbagent.config"):
        assert Settings.load(env=env).limits.max_steps == 8  # the new place wins
    assert not [r for r in caplog.records if r.name == "nbagent.config"]  # that file was noted already
