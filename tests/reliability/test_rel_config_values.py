"""Every numeric setting, from any source, is a finite number in its range or refused with one clear error."""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbagent.config import HTTPSettings, LimitSettings, Price, Profile, RetrySettings, Settings
from nbagent.config_rules import SettingRule, rule_of
from nbagent.errors import ConfigError, InvalidSetting

SECTIONS = {"http": HTTPSettings, "retry": RetrySettings, "limits": LimitSettings}
NUMERIC = sorted((section, f.name) for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)
                 if rule_of(f) is not None and rule_of(f).kind in (int, float))  # type: ignore[union-attr]

raw_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(),
    st.integers(min_value=-10**400, max_value=10**400),
    st.booleans(),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=10),
    st.sampled_from(["nan", "NaN", "inf", "-inf", "Infinity", "1e309", "none", "", " 3 ", "4.0", "0x10", "1_000"]),
)


def _rule(section: str, name: str) -> SettingRule:
    rule = rule_of(SECTIONS[section].__dataclass_fields__[name])
    assert rule is not None
    return rule


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    return json.dumps(value)  # printable ASCII: a valid TOML basic string


def _load(via: str, section: str, name: str, raw: Any) -> tuple[Settings, str]:
    if via == "env":
        var = f"NBAGENT_{section.upper()}__{name.upper()}"
        return Settings.load(env={var: str(raw)}), f"from environment variable {var}"
    if via == "arg":
        return Settings.load(env={}, **{f"{section}__{name}": raw}), f"from argument {section}__{name}"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.toml"
        path.write_text(f"[{section}]\n{name} = {_toml(raw)}\n")
        return Settings.load(path, env={}), f"in {path}"


def _in_range(value: Any, rule: SettingRule) -> bool:
    if value is None:
        return rule.optional
    if isinstance(value, bool) or not isinstance(value, rule.kind) or (rule.kind is float and not math.isfinite(value)):
        return False
    return rule.low is None or (value > rule.low if rule.above else value >= rule.low)


@settings(max_examples=400, deadline=None)
@given(field=st.sampled_from(NUMERIC), raw=raw_values, via=st.sampled_from(["env", "file", "arg"]))
def test_a_loaded_number_is_finite_and_in_range_or_refused_naming_key_and_source(
        field: tuple[str, str], raw: Any, via: str) -> None:
    section, name = field
    try:
        s, _ = _load(via, section, name, raw)
    except InvalidSetting as err:
        assert err.key == f"{section}.{name}" and err.allowed == _rule(section, name).allowed()
        assert err.source.startswith(("from environment variable", "from argument", "in ")), err.source
        assert "\n" not in str(err) and str(err).endswith(f"must be {err.allowed}")
        return
    assert _in_range(getattr(getattr(s, section), name), _rule(section, name))


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(NUMERIC), raw=raw_values)
def test_an_assignment_is_checked_and_a_refused_one_changes_nothing(field: tuple[str, str], raw: Any) -> None:
    section, name = field
    obj = SECTIONS[section]()
    before = getattr(obj, name)
    try:
        setattr(obj, name, raw)
    except InvalidSetting as err:
        assert err.source == "set in code" and getattr(obj, name) == before
        return
    assert _in_range(getattr(obj, name), _rule(section, name))


@pytest.mark.parametrize("cls", [HTTPSettings, RetrySettings, LimitSettings, Price, Profile, Settings])
def test_every_plain_field_has_a_rule(cls: type) -> None:
    tables = {"profiles", "http", "retry", "limits", "prices", "context_windows", "sandbox", "policy", "cache",
              "otel", "mcp", "home", "config_path"}
    missing = [f.name for f in dataclasses.fields(cls) if rule_of(f) is None and f.name not in tables]
    assert not missing, f"{cls.__name__}: fields without a rule: {missing}"


def test_the_defaults_pass_their_own_rules() -> None:
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            rule = rule_of(f)
            assert rule is not None and (rule.kind not in (int, float) or _in_range(getattr(cls(), f.name), rule)), \
                f"{section}.{f.name}"


def test_a_section_that_is_not_a_table_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("http = 3\n")
    with pytest.raises(ConfigError, match=r"http \(in .*config.toml\): must be a table"):
        Settings.load(path, env={})
