"""Settings: the TOML file, `BANDIT_ROUTER_*` overrides, command-line overrides, key files, clear errors."""

from __future__ import annotations

import codecs
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import pytest
from docs_pages import service_section

from bandit_router.catalog import ModelSpec
from bandit_router.config import KEYS, ConfigError, Secrets, Settings, describe_keys, load_settings

KEY_A = "a" * 20
KEY_B = "b" * 20


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_file_or_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(env={})
    assert settings == Settings()
    assert (settings.host, settings.port, settings.db) == ("127.0.0.1", 8000, Path("bandit-router.db"))
    assert settings.synchronous == "normal" and not settings.store_prompts and not settings.auth_enabled
    assert len(settings.load_catalog()) >= 5


def test_file_then_environment_then_overrides(tmp_path: Path) -> None:
    config = _write(
        tmp_path / "br.toml",
        """
port = 9000
db = "data/br.db"
policy = "linucb"
cost_weight = 5
reward_window_s = 60
default_reward = 0.2
aggregation = "EARLIEST"
store_prompts = true
[policy_settings]
alpha = 0.5
""",
    )
    settings = load_settings(config, env={"BANDIT_ROUTER_PORT": "9100", "BANDIT_ROUTER_COST_WEIGHT": "7.5"})
    assert settings.port == 9100 and settings.cost_weight == 7.5
    assert settings.db == tmp_path / "data" / "br.db"  # relative to the file
    assert settings.policy == "linucb" and settings.policy_settings == {"alpha": 0.5}
    assert (settings.reward_window_s, settings.default_reward, settings.aggregation) == (60.0, 0.2, "earliest")
    assert settings.store_prompts is True
    cli = load_settings(config, env={"BANDIT_ROUTER_PORT": "9100"}, overrides={"port": 9200, "db": "x.db"})
    assert cli.port == 9200 and cli.db == Path("x.db")


def test_config_file_from_environment_and_default_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path / "other.toml", "port = 9001\n")
    assert load_settings(env={"BANDIT_ROUTER_CONFIG": str(tmp_path / "other.toml")}).port == 9001
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "bandit-router.toml", "port = 9002\n")
    assert load_settings(env={}).port == 9002


def test_inline_models_and_catalog_file(tmp_path: Path) -> None:
    inline = _write(
        tmp_path / "inline.toml",
        """
[[models]]
name = "small"
input_usd_per_mtok = 0.1
output_usd_per_mtok = 0.2
tags = { tier = "small" }
[[models]]
name = "large"
input_usd_per_mtok = 2
output_usd_per_mtok = 8
""",
    )
    assert load_settings(inline, env={}).load_catalog().names == ("small", "large")
    catalog = _write(tmp_path / "catalog.toml", inline.read_text())
    from_file = load_settings(_write(tmp_path / "c.toml", 'catalog = "catalog.toml"\n'), env={})
    assert from_file.catalog == catalog and from_file.load_catalog().names == ("small", "large")
    replaced = load_settings(inline, env={"BANDIT_ROUTER_CATALOG": str(catalog)})
    assert replaced.models == () and replaced.load_catalog().names == ("small", "large")


def test_keys_come_from_environment_and_files_and_are_never_shown(tmp_path: Path) -> None:
    keyfile = _write(tmp_path / "keys", f"# client keys\n{KEY_B}\n\n")
    os.chmod(keyfile, 0o600)
    admin = _write(tmp_path / "admin", f"{'c' * 24}\n")
    config = _write(tmp_path / "k.toml", f'api_keys_file = "keys"\nadmin_keys_file = "{admin}"\n')
    settings = load_settings(config, env={"BANDIT_ROUTER_API_KEYS": f" {KEY_A} ,"})
    assert set(settings.api_keys.reveal()) == {KEY_A, KEY_B}
    assert settings.admin_keys.reveal() == ("c" * 24,)
    assert settings.auth_enabled
    shown = repr(settings) + str(settings.api_keys)
    assert KEY_A not in shown and KEY_B not in shown and "c" * 24 not in shown
    assert "2 keys" in str(settings.api_keys)


_BAD_FILES = [
    ("colour = 'red'\n", "unknown keys"),
    ("port = 0\n", "port"),
    ("port = true\n", "port: must be an integer"),
    ("port = '80'\n", "port: must be an integer"),
    ("cost_weight = -1\n", "cost_weight"),
    ("cost_weight = nan\n", "cost_weight"),
    ("cost_weight = inf\n", "cost_weight"),
    ("synchronous = 'off'\n", "synchronous"),
    ("aggregation = 'sum'\n", "aggregation"),
    ("default_reward = 0.5\n", "default_reward: needs reward_window_s"),
    ("reward_window_s = 10\ndefault_reward = 2\n", "default_reward"),
    ("aggregation = 'average'\n", "average needs reward_window_s"),
    ("reward_window_s = 0\n", "reward_window_s"),
    ("policy = 'no-such-policy'\n", "policy"),
    ("policy = 'vw-squarecb'\n[policy_settings]\nno_such_setting = 1\n", "policy"),
    ("store_prompts = 'yes'\n", "store_prompts"),
    ("checkpoint_interval = 0\n", "checkpoint_interval"),
    ("max_body_bytes = 10\n", "max_body_bytes"),
    ("workers = 0\n", "workers"),
    (f"api_keys = ['{KEY_A}']\n", "do not belong in the configuration file"),
    ("api_keys_file = 'missing-file'\n", "api_keys_file: cannot read"),
    ("catalog = 'missing.toml'\n", "catalog"),
    ("catalog = 'x.toml'\n[[models]]\nname = 'm'\ninput_usd_per_mtok = 1\noutput_usd_per_mtok = 1\n", "not both"),
    ("[[models]]\nname = 'm'\ninput_usd_per_mtok = -1\noutput_usd_per_mtok = 1\n", "models"),
    ("[[models]]\nname = 'm'\ninput_usd_per_mtok = 1\noutput_usd_per_mtok = 1\n" * 2,
     "models: duplicate model name 'm'"),
    ("port = \n", "not valid TOML"),
    ("log_level = 'loud'\n", "log_level: unknown 'loud'; one of critical, error, warning, info, debug"),
    ("[budgets]\nspend_usd = '5/1x'\n",
     r"toml: budgets: target 'spend_usd=5/1x': period '1x' must be seconds or a number with s, m, h, d or w"),
    # a newcomer's slips name the key they meant
    ("cost_wieght = 40\n", r"unknown keys 'cost_wieght' \(did you mean cost_weight\?\)"),
    ("[serverr]\nport = 1\n", r"unknown keys 'serverr' \(did you mean \[server\]\?\)"),
    ("[server]\nprot = 1\n", r"\[server\] has no key 'prot' \(did you mean port\?\)"),
    ("[server]\ndb = 'x.db'\n", r"\[server\] has no key 'db' \(it belongs in \[storage\], or at the top level\)"),
    # a misspelt model or tag in a share target would be a target that can never bind
    ("[budgets]\nshare = { 'gpt4o' = 0.3 }\n", "budgets: share:gpt4o=0.3: no active model is picked"),
    ("[budgets.tenants.acme]\nshare = { 'tier=lage' = 0.1 }\n", "@acme:share:tag:tier=lage=0.1: no active model"),
    # the table said once ("budgets: budgets.tenants.acme: …" before)
    ("[budgets.tenants.acme]\nspend_usdd = '5/1d'\n",
     r"toml: budgets: tenants\.acme: target 'spend_usdd=5/1d': unknown target 'spend_usdd' "
     r"\(did you mean spend_usd\?\)"),
]


def test_a_key_file_that_is_not_utf8_is_named_without_its_bytes(tmp_path: Path) -> None:
    """A key file with a byte that is not UTF-8 was a UnicodeDecodeError traceback at start."""
    keys = tmp_path / "keys"
    keys.write_bytes(b"\xffsecret-key-0123456789\n")
    keys.chmod(0o600)
    with pytest.raises(ConfigError, match=r"api_keys_file: .*keys is not UTF-8 text") as info:
        load_settings(_write(tmp_path / "k.toml", 'api_keys_file = "keys"\n'), env={})
    assert "secret" not in str(info.value) and "xff" not in str(info.value)


@pytest.mark.parametrize("kind", ["config", "catalog", "rules"])
def test_toml_files_saved_with_a_byte_order_mark_load_and_other_encodings_are_named(tmp_path: Path,
                                                                                    kind: str) -> None:
    """Windows Notepad's "UTF-8 with BOM" (and PowerShell 5's `Out-File -Encoding utf8`) start a file with a
    byte-order mark: the configuration, a catalog and a rules file were refused as "not valid TOML: Invalid
    statement (at line 1, column 1)" of a first line that reads right, a key file's first key as not printable
    ASCII. The mark is skipped; a UTF-16 file (PowerShell 5's `>`) and a Latin-1 byte are named as what they are,
    where they were "'utf-8' codec can't decode byte 0xff in position 0"."""
    from bandit_router.catalog import default_catalog

    keys = tmp_path / "keys"
    keys.write_bytes(codecs.BOM_UTF8 + KEY_A.encode() + b"\n")
    keys.chmod(0o600)
    catalog = "".join(f'[[models]]\nname = "{m.name}"\ninput_usd_per_mtok = 1\noutput_usd_per_mtok = 2\n'
                      for m in default_catalog())
    text, config = {
        "config": ('port = 9001\napi_keys_file = "keys"\n', "br.toml"),
        "catalog": (catalog, "catalog.toml"),
        "rules": ('default = "gpt-4o"\n[[rules]]\nmodel = "gpt-4o-mini"\n', "rules.toml"),
    }[kind]
    if kind != "config":
        _write(tmp_path / "br.toml", {"catalog": 'catalog = "catalog.toml"\n',
                                      "rules": 'policy = "rules:file=rules.toml"\n'}[kind])
    file = tmp_path / config
    file.write_bytes(codecs.BOM_UTF8 + text.encode())
    settings = load_settings(tmp_path / "br.toml", env={})
    assert {"config": settings.port == 9001 and len(settings.api_keys) == 1,
            "catalog": next(iter(settings.load_catalog())).input_usd_per_mtok == 1,
            "rules": settings.policy == "rules:file=rules.toml"}[kind]
    where = {"config": f"{file}: ", "catalog": f"catalog: {file}: ",
             "rules": f"policy: policy 'rules': rules file {file}: "}
    file.write_bytes(codecs.BOM_UTF16_LE + text.encode("utf-16-le"))
    expected = (where[kind] + "the file is UTF-16 text (it starts with the byte-order mark 0xff 0xfe), not UTF-8: "
                "save it as UTF-8, or convert it, e.g. iconv -f utf-16 -t utf-8")
    with pytest.raises(ConfigError, match=f"^{re.escape(expected)}$"):
        load_settings(tmp_path / "br.toml", env={})
    file.write_bytes(text.encode("utf-16-le"))  # no mark: was "Expected '=' after a key … (at line 1, column 2)"
    expected = (where[kind] + "line 1 has a NUL byte (0x00), which TOML text never has: UTF-16 or UTF-32 text "
                "without a byte-order mark? Save it as UTF-8")
    with pytest.raises(ConfigError, match=f"^{re.escape(expected)}"):
        load_settings(tmp_path / "br.toml", env={})
    file.write_bytes(text.encode() + b"# caf\xe9\n")
    line = text.count("\n") + 1
    expected = where[kind] + f"line {line} is not UTF-8 (its byte 6 is 0xe9): save the file as UTF-8"
    with pytest.raises(ConfigError, match=f"^{re.escape(expected)}"):
        load_settings(tmp_path / "br.toml", env={})


@pytest.mark.parametrize("kind", ["config", "catalog", "rules"])
def test_a_toml_file_nested_hundreds_of_levels_deep_is_refused_in_one_line(tmp_path: Path, kind: str) -> None:
    """`tomllib` parses nested arrays and inline tables recursively: a file nesting them ~1,000 levels deep raised
    an uncaught `RecursionError` through `load_settings` and `load_catalog` (a traceback from the CLI, exit 1). It
    is a `ConfigError` naming the file, and the CLI's exit status 2."""
    deep = "x = " + "{a = " * 1000 + "1" + "}" * 1000 + "\n"
    name = {"config": "br.toml", "catalog": "catalog.toml", "rules": "rules.toml"}[kind]
    if kind != "config":
        _write(tmp_path / "br.toml", {"catalog": 'catalog = "catalog.toml"\n',
                                      "rules": 'policy = "rules:file=rules.toml"\n'}[kind])
    file = _write(tmp_path / name, deep)
    where = {"config": f"{file}: ", "catalog": f"catalog: {file}: ",
             "rules": f"policy: policy 'rules': rules file {file}: "}[kind]
    expected = where + "cannot be read: its arrays or inline tables are nested too deeply (hundreds of levels"
    with pytest.raises(ConfigError, match=f"^{re.escape(expected)}"):
        load_settings(tmp_path / "br.toml", env={})
    from typer.testing import CliRunner

    from bandit_router.cli import app as cli_app

    result = CliRunner().invoke(cli_app, ["check", "--config", str(tmp_path / "br.toml"),
                                          "--db", str(tmp_path / "none.db")])
    assert result.exit_code == 2 and "nested too deeply" in result.output, result.output


@pytest.mark.parametrize(("variable", "value"), [("BANDIT_ROUTER_SHADOW_POLICIES", "[" * 3000 + "]" * 3000),
                                                 ("BANDIT_ROUTER_POLICY_SETTINGS", '{"a": ' * 3000 + "1" + "}" * 3000)])
def test_a_json_setting_nested_thousands_of_levels_deep_is_refused_naming_its_variable(tmp_path: Path, variable: str,
                                                                                       value: str) -> None:
    """A JSON value from the environment is decoded recursively, as TOML is: nested ~3,000 levels deep it raised
    an uncaught `RecursionError` through `load_settings` (a traceback from the CLI). It is a `ConfigError` naming
    the variable."""
    key = variable.removeprefix("BANDIT_ROUTER_").lower()
    with pytest.raises(ConfigError, match=f"^{variable}: {key}: must be .*nested too deeply"):
        load_settings(_write(tmp_path / "br.toml", ""), env={variable: value})


def test_a_copy_of_the_shipped_catalog_given_as_the_configuration_says_how_to_name_it(tmp_path: Path) -> None:
    """The shipped catalog said "edit a copy of this file and pass it with `--config` (see README,
    'Configuration')": there is no such README section, and `--config copy.toml` was refused as "unknown keys
    'prices_read_on', 'prices_source'; known keys: host, port, …" (80 keys). The file says to name the copy with
    `catalog = …`, and a catalog given as the configuration is refused saying so; named so, it loads. The refusal
    said "name it in one, catalog = "my-catalog.toml"": from another folder's configuration that path is not found
    (a relative path is read from the configuration's folder); it says where."""
    from importlib import resources

    shipped = resources.files("bandit_router").joinpath("default_catalog.toml").read_text(encoding="utf-8")
    assert 'catalog = "my-catalog.toml"' in shipped and "pass it with `--config`" not in shipped
    copy = _write(tmp_path / "my-catalog.toml", shipped)
    expected = (f"{copy}: unknown keys 'prices_read_on', 'prices_source': this is a catalog file, not a configuration "
                f'file: name it in a configuration file in its folder, catalog = "my-catalog.toml" (a relative path is '
                f"read from the configuration file's folder), or BANDIT_ROUTER_CATALOG={copy}")
    with pytest.raises(ConfigError, match=f"^{re.escape(expected)}$"):
        load_settings(copy, env={})
    named = load_settings(_write(tmp_path / "br.toml", 'catalog = "my-catalog.toml"\n'), env={})
    assert named.catalog == copy and len(named.load_catalog()) == 8


@pytest.mark.parametrize(("text", "message"), _BAD_FILES, ids=[t.split("\n")[0][:30] for t, _ in _BAD_FILES])
def test_bad_files_raise_config_errors_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(_write(tmp_path / "bad.toml", text), env={})


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("BANDIT_ROUTER_PORT", "eighty", "BANDIT_ROUTER_PORT: port: must be an integer"),
        ("BANDIT_ROUTER_COST_WEIGHT", "cheap", "BANDIT_ROUTER_COST_WEIGHT"),
        ("BANDIT_ROUTER_STORE_PROMPTS", "maybe", "BANDIT_ROUTER_STORE_PROMPTS"),
        ("BANDIT_ROUTER_POLICY_SETTINGS", "[1", "must be a JSON object"),
        ("BANDIT_ROUTER_API_KEYS", "short", "at least 16 characters"),
        ("BANDIT_ROUTER_ADMIN_KEYS", "has a space in the key", "printable ASCII"),
        ("BANDIT_ROUTER_DB", ":memory:", "db: ':memory:' is SQLite's in-memory database, which each connection"),
        # the example was a policy spec's, whichever list it was
        ("BANDIT_ROUTER_ALLOWED_HOSTS", "example.com",
         r"^BANDIT_ROUTER_ALLOWED_HOSTS: allowed_hosts: must be a JSON list of strings, e\.g\. \[\"a\", \"b\"\]$"),
    ],
)
def test_bad_environment_raises_config_errors(variable: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(env={variable: value})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BANDIT_ROUTER_POLICY": "lincub"}, "BANDIT_ROUTER_POLICY: policy: unknown policy 'lincub' (did you mean "
         "linucb?)"),
        ({"BANDIT_ROUTER_POLICY_SETTINGS": '{"flor": 0.05}'}, "BANDIT_ROUTER_POLICY_SETTINGS: policy: policy "
         "'default' has no setting 'flor' (did you mean floor?)"),
        ({"BANDIT_ROUTER_PORT": "70000"}, "BANDIT_ROUTER_PORT: port: must be in 1..65535, got 70000"),
        ({"BANDIT_ROUTER_WORKERS": "0"}, "BANDIT_ROUTER_WORKERS: workers: must be in 1..64, got 0"),
        ({"BANDIT_ROUTER_CATALOG": "missing.toml"}, "BANDIT_ROUTER_CATALOG: catalog: missing.toml: no such file"),
        ({"BANDIT_ROUTER_RETENTION_DAYS": "0.01"}, "BANDIT_ROUTER_RETENTION_DAYS: retention_days: 0.01 days is "
         "not longer than reward_window_s"),
    ],
)
def test_a_value_from_the_environment_that_the_checks_refuse_is_named_by_its_variable(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    """A value the settings' checks refuse (a range, a policy's name or setting, a file) was named by its key only
    (`port: must be in 1..65535`), as if the configuration file said it: next to a file with `port = 8000` or
    `policy = "default"` the reader looked there. The variable that gave it is named, as a value that does not
    parse already was; given on the command line, or in the file, the message is as it was."""
    config = _write(tmp_path / "br.toml", 'policy = "default"\nport = 8000\nreward_window_s = 3600\n')
    with pytest.raises(ConfigError) as refused:
        load_settings(config, env=env)
    assert str(refused.value).startswith(message)
    key = message.partition(": ")[2].partition(":")[0]
    if key in ("port", "workers"):  # a command-line option wins over the variable: its value is the one refused
        with pytest.raises(ConfigError, match=f"^{key}: must be in"):
            load_settings(config, env=env, overrides={key: 0})
    with pytest.raises(ConfigError, match=r"^port: must be in"):
        load_settings(_write(tmp_path / "bad.toml", "port = 70000\n"), env={})


def test_environment_parses_every_kind(tmp_path: Path) -> None:
    env = {
        "BANDIT_ROUTER_ACCESS_LOG": "yes",
        "BANDIT_ROUTER_SEED": "",
        "BANDIT_ROUTER_REWARD_WINDOW_S": "30",
        "BANDIT_ROUTER_DEFAULT_REWARD": "0.1",
        "BANDIT_ROUTER_POLICY": "vw-squarecb",
        "BANDIT_ROUTER_POLICY_SETTINGS": '{"gamma_scale": 50}',
        "BANDIT_ROUTER_SYNCHRONOUS": "FULL",
        "BANDIT_ROUTER_DB": str(tmp_path / "e.db"),
        "BANDIT_ROUTER_NOT_A_KEY": "ignored with a warning",
    }
    settings = load_settings(env=env)
    assert settings.access_log is True and settings.seed is None
    assert settings.reward_window_s == 30.0 and settings.default_reward == 0.1
    assert settings.policy_settings == {"gamma_scale": 50} and settings.synchronous == "full"
    assert settings.db == tmp_path / "e.db"


@pytest.mark.parametrize(
    ("variable", "meant"),
    [("BANDIT_ROUTER_API_KEY", "BANDIT_ROUTER_API_KEYS"), ("BANDIT_ROUTER_ADMIN_KEY", "BANDIT_ROUTER_ADMIN_KEYS"),
     ("BANDIT_ROUTER_CONFG", "BANDIT_ROUTER_CONFIG"), ("BANDIT_ROUTER_PROT", "BANDIT_ROUTER_PORT")],
)
def test_a_misspelt_variable_that_is_no_settings_key_is_told_the_one_it_meant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, variable: str, meant: str
) -> None:
    """`BANDIT_ROUTER_API_KEY` (as OPENAI_API_KEY is spelt) was "ignoring unknown environment variable
    BANDIT_ROUTER_API_KEY" with no hint, and the service ran without keys; `BANDIT_ROUTER_ADMIN_KEY` was pointed at
    BANDIT_ROUTER_ADMIN_KEYS_FILE. The variables that are not settings keys (the keys, the configuration file) are
    suggested too, the closest name of either kind first."""
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.WARNING)
    settings = load_settings(env={variable: KEY_A})
    assert not settings.api_keys and not settings.admin_keys
    assert [r.getMessage() for r in caplog.records] == [
        f"ignoring unknown environment variable {variable} (did you mean {meant}?)"]


def test_models_from_the_environment_is_ignored_with_a_pointer_to_catalog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """BANDIT_ROUTER_MODELS was 'unknown (did you mean BANDIT_ROUTER_MODELS?)': it suggested itself."""
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.WARNING)
    load_settings(env={"BANDIT_ROUTER_MODELS": '[{"name": "a"}]'})
    assert [r.getMessage() for r in caplog.records] == [
        "ignoring BANDIT_ROUTER_MODELS: inline [[models]] tables belong in the configuration file; point "
        "BANDIT_ROUTER_CATALOG at a catalog file instead"
    ]


def test_serves_hand_off_to_its_workers_is_not_an_unknown_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """`serve --workers 2` hands its options and connection limits to the workers in two `BANDIT_ROUTER_*`
    variables: each worker's settings skip them without 'ignoring unknown environment variable'."""
    from bandit_router.service.app import SERVE_ARGS
    from bandit_router.service.protocol import LIMITS_VARIABLE, Limits

    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.WARNING)
    hand_off = {SERVE_ARGS: "{}", LIMITS_VARIABLE: Limits(5, 30, 1000).to_environment()}
    load_settings(env={**hand_off, "BANDIT_ROUTER_NOT_A_KEY": "x", "BANDIT_ROUTER_COST_WIEGHT": "4"})
    assert sorted(r.getMessage() for r in caplog.records) == [
        "ignoring unknown environment variable BANDIT_ROUTER_COST_WIEGHT (did you mean BANDIT_ROUTER_COST_WEIGHT?)",
        "ignoring unknown environment variable BANDIT_ROUTER_NOT_A_KEY",
    ]


def test_settings_validate_when_built_directly() -> None:
    with pytest.raises(ConfigError, match="port"):
        Settings(port=70000)
    with pytest.raises(ConfigError, match="api_keys"):
        Settings(api_keys=Secrets(("short",)))
    assert Settings().replace(port=1234).port == 1234


@pytest.mark.parametrize(("values", "message"), [
    # taken: `check()` then failed with "'dict' object has no attribute 'fallback_model'"
    ({"budgets": {"avg_cost_usd": 0.0005}}, r"^Settings: budgets must be a BudgetConfig, got dict; "
     r"BudgetConfig.from_mapping\(\{...\}\) reads a \[budgets\] table"),
    ({"budgets": {}}, "budgets must be a BudgetConfig, got dict"),  # taken as no budgets
    # "replace() should be called on dataclass instances"
    ({"server": {"port": 9000}, "workers": 2}, r"^Settings: server must be a ServerSettings, got dict; build one "
     r"with ServerSettings\(...\), or give its keys flat: Settings\(host=...\)"),
    ({"auth": {}}, "auth must be an AuthSettings, got dict"),
])
def test_a_section_of_the_wrong_type_is_a_type_error_naming_it(values: dict[str, Any], message: str) -> None:
    with pytest.raises(TypeError, match=message):
        Settings(**values)


@pytest.mark.parametrize(("values", "message"), [
    # a TypeError from the range check: "'<=' not supported between instances of 'int' and 'str'"
    ({"port": "9000"}, "port: must be an integer, got str '9000'"),
    ({"cost_weight": "20"}, "cost_weight: must be a number, got str '20'"),
    ({"workers": 2.5}, "workers: must be an integer, got float 2.5"),
    ({"cost_weight": 10**400}, "cost_weight: must be a number, got int 1000"),  # OverflowError of math.isfinite
    # taken: read letter by letter when the policies were built, or never looked at
    ({"shadow_policies": "linucb"}, "shadow_policies: must be a list of strings, got str 'linucb'"),
    ({"access_log": "no"}, "access_log: must be true or false, got str 'no'"),  # a non-empty string: logged
    ({"models": [{"name": "a"}]}, r"models: must be a list of ModelSpecs, got dict \{'name': 'a'\} in the list"),
    ({"policy_settings": [("floor", 0.1)]}, "policy_settings: must be a Mapping, got list"),
    ({"api_keys": ("k" * 20,)}, r"^api_keys: must be Secrets, got tuple$"),  # and never shows a key
])
def test_a_key_of_the_wrong_type_is_a_config_error_naming_it(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings(**values)


def test_a_list_is_taken_for_a_tuple_and_a_string_for_a_path() -> None:
    """`Settings(shadow_policies=["linucb"])` is the tuple; `catalog="x.toml"` the path."""
    settings = Settings(shadow_policies=["linucb"], catalog="catalog.toml", port=__import__("numpy").int64(9000))
    assert settings.shadow_policies == ("linucb",) and settings.catalog == Path("catalog.toml")
    assert type(settings.port) is int and str(Settings(db="postgresql://u:p@h/d").db).startswith("postgresql://")


def test_settings_pickle_and_deep_copy_even_once_checked() -> None:
    """`copy.deepcopy(Settings())` failed on the budgets' read-only tenants ("cannot pickle 'mappingproxy'"), and
    checked settings on the policies `check()` keeps (VW's `Workspace`). The copy is equal and not `checked`."""
    import copy
    import pickle

    from bandit_router.budgets import BudgetConfig

    settings = Settings(policy="vw-squarecb", budgets=BudgetConfig.from_strings(["@acme:spend_usd=5/1d"]),
                        models=(ModelSpec("m", 1.0, 2.0, tags={"tier": "small"}),)).check()
    for again in (pickle.loads(pickle.dumps(settings)), copy.deepcopy(settings)):
        assert again == settings and not again.checked and again.check().checked


@pytest.mark.parametrize("key", ["cost_weight", "latency_weight"])
def test_a_configured_weight_has_the_bound_of_a_requests_cost_weight(key: str) -> None:
    """cost_weight = 1e308 was accepted (a request's is at most 1e9): every reward was learned as about -1e306 and
    the rollup's sums of λ overflowed to infinity."""
    assert getattr(Settings(**{key: 1e9}), key) == 1e9
    with pytest.raises(ConfigError, match=rf"{key}: must be a finite number in \[0, 1e9\]"):
        Settings(**{key: 1e308})


def test_every_key_is_described() -> None:
    table = describe_keys()
    for name in KEYS:
        assert f"`{name}`" in table


def test_the_docs_keys_table_is_current() -> None:
    docs = service_section(Path(__file__).resolve().parents[1])
    assert describe_keys() in docs


def test_the_docs_example_configuration_loads(tmp_path: Path) -> None:
    docs = service_section(Path(__file__).resolve().parents[1])
    example = docs.split("```toml\n", 1)[1].split("```", 1)[0]
    config = _write(tmp_path / "bandit-router.toml", example)
    _write(tmp_path / "catalog.toml", "[[models]]\nname = 'm'\ninput_usd_per_mtok = 1\noutput_usd_per_mtok = 2\n")
    _write(tmp_path / "client-keys", KEY_A + "\n")
    _write(tmp_path / "admin-keys", KEY_B + "\n")
    settings = load_settings(config, env={})
    assert settings.synchronous == "full" and settings.policy_settings == {"gamma_scale": 20}
    assert settings.default_reward == 0.5 and settings.api_keys.reveal() == (KEY_A,)


def test_settings_are_nested_sections_reachable_by_flat_names(tmp_path: Path) -> None:
    settings = Settings(port=9000, db=tmp_path / "x.db", aggregation="earliest")
    assert settings.server.port == settings.port == 9000
    assert settings.storage.db == settings.db == tmp_path / "x.db"
    assert settings.feedback.aggregation == "earliest"
    assert settings.replace(port=9001).server.port == 9001 and settings.replace(port=9001).storage.db == settings.db
    for name, key in KEYS.items():
        assert key.help, name
        if key.section != "budgets":
            assert getattr(getattr(settings, key.section), name) == getattr(settings, name)


def test_the_file_may_group_keys_in_section_tables(tmp_path: Path) -> None:
    config = _write(tmp_path / "s.toml", "[server]\nport = 9300\n[storage]\nsynchronous = 'FULL'\n")
    settings = load_settings(config, env={})
    assert settings.server.port == 9300 and settings.storage.synchronous == "full"
    with pytest.raises(ConfigError, match=r"\[server\] has no key 'db'"):
        load_settings(_write(tmp_path / "bad.toml", "[server]\ndb = 'x.db'\n"), env={})


def test_construction_is_cheap_and_check_does_the_rest() -> None:
    settings = Settings(policy="no-such-policy")  # builds no policy, reads no catalog
    with pytest.raises(ConfigError, match="policy"):
        settings.check()
    with pytest.raises(ConfigError, match="catalog"):
        Settings(catalog=Path("/no/such/catalog.toml")).check()
    assert Settings().check() == Settings()


def test_layers_merge_lowest_first() -> None:
    from bandit_router.config import layered

    assert layered({"a": 1, "b": 2}, {"b": 3, "c": None}, {"c": 4}) == {"a": 1, "b": 3, "c": 4}
    assert layered({"seed": 5}, {"seed": None}, none_is_unset=False) == {"seed": None}


def _rules_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A configuration folder with rules.toml (→ gpt-4o), and a working directory elsewhere whose rules.toml says
    gpt-4o-mini: which one a policy read tells which folder its relative path was resolved against."""
    conf, cwd = tmp_path / "conf", tmp_path / "cwd"
    conf.mkdir()
    cwd.mkdir()
    _write(conf / "rules.toml", 'default = "gpt-4o"\n')
    _write(cwd / "rules.toml", 'default = "gpt-4o-mini"\n')
    monkeypatch.chdir(cwd)
    return conf


@pytest.mark.parametrize(
    "text",
    [
        'policy = "rules:file=rules.toml"\n',
        'policy = "rules"\npolicy_settings = { file = "rules.toml" }\n',
        'policy = "rules:file=./sub/../rules.toml"\n',
    ],
)
def test_a_rules_file_named_in_the_config_file_is_read_from_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    """Like `db` and `catalog`, a relative path in a policy spec written in the configuration file is relative to
    the file's folder (it was read from the working directory); from the environment it stays relative to the
    working directory."""
    from bandit_router.log.policies import build_router
    from bandit_router.types import Request

    conf = _rules_folders(tmp_path, monkeypatch)
    (conf / "sub").mkdir()
    config = _write(conf / "br.toml", text + 'shadow_policies = ["rules:file=rules.toml,default=gpt-4o-mini"]\n')
    settings = load_settings(config, env={})
    assert build_router(settings).route(Request(prompt="hello")).model == "gpt-4o"
    assert build_router(settings, policy=settings.shadow_policies[0]).policy.params.file == str(  # type: ignore[attr-defined]
        conf / "rules.toml"
    )
    assert settings.build_policy().name in (settings.policy, "rules:file=rules.toml")  # the spec as written
    env = {"BANDIT_ROUTER_POLICY": "rules:file=rules.toml", "BANDIT_ROUTER_POLICY_SETTINGS": "{}"}
    from_env = load_settings(config, env=env)
    assert build_router(from_env).route(Request(prompt="hello")).model == "gpt-4o-mini"
    env = {"BANDIT_ROUTER_POLICY": "rules", "BANDIT_ROUTER_POLICY_SETTINGS": '{"file": "rules.toml"}'}
    settings_from_env = load_settings(config, env=env)  # (a `file=` in the file's policy too would be refused)
    assert build_router(settings_from_env).route(Request(prompt="hello")).model == "gpt-4o-mini"


def test_a_missing_rules_file_named_in_the_config_file_is_refused_with_its_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = _rules_folders(tmp_path, monkeypatch)
    config = _write(conf / "br.toml", 'policy = "rules:file=other.toml"\n')
    expected = f"policy: policy 'rules': rules file {conf / 'other.toml'}: No such file or directory"
    with pytest.raises(ConfigError, match=f"^{re.escape(expected)}$"):
        load_settings(config, env={})


@pytest.mark.parametrize(
    ("rules", "problem"),
    [
        (b'[[rule]]\nmodel = "gpt-4o"\nmarkers = ["code"]\n', "unknown keys 'rule' (did you mean rules?); a rules file "
         'holds `default = "<model>"` and [[rules]] tables'),
        (b'defualt = "gpt-4o"\n', "unknown keys 'defualt' (did you mean default?)"),
        (b'[rules]\nmodel = "gpt-4o"\n', "rules must be a list of tables, one per rule ([[rules]] in TOML, not "
         "[rules]), got one table: {'model': 'gpt-4o'}"),
        (b'rules = "gpt-4o"\n', "rules must be a list of tables ([[rules]] in TOML), got 'gpt-4o'"),
        (b"rules = [5]\n", 'each rule must be a table ([[rules]] with model = "<model>"), got 5'),
        (b"default = 5\n", "default must be a model name (a string), got 5"),
        (b'[[rules]]\nmodel = "gpt-4o"\nwhen = "code"\n', "a rule needs `model` and may have"),
        (b'[[rules]]\nmodel = "caf\xe9"\n', "line 2 is not UTF-8 (its byte 13 is 0xe9): save the file as UTF-8"),
    ],
)
def test_a_rules_file_that_is_not_what_it_should_be_is_refused_naming_it(
    tmp_path: Path, rules: bytes, problem: str
) -> None:
    """A rules file's misspelt `[[rule]]` or `defualt` was ignored without a word (the built-in rules or the cheapest
    model decided in their place); `[rules]` for `[[rules]]` was read key by key and each key letter by letter ("got
    ['d', 'e', 'l', 'm', 'o']"), `rules = [5]` said "'int' object is not iterable" and a file that is not UTF-8 gave
    the codec's words without the file. Each is refused naming the file and what is wrong."""
    (tmp_path / "rules.toml").write_bytes(rules)
    config = _write(tmp_path / "br.toml", 'policy = "rules:file=rules.toml"\n')
    with pytest.raises(ConfigError) as refused:
        load_settings(config, env={})
    assert str(refused.value).startswith(f"policy: policy 'rules': rules file {tmp_path / 'rules.toml'}: {problem}")


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ("rules = { model = 'gpt-4o' }", "rules must be a list of tables, one per rule ([[rules]] in TOML, not "
         "[rules]), got one table: {'model': 'gpt-4o'}"),
        ("rules = 'gpt-4o'", "rules must be a list of tables ([[rules]] in TOML), got 'gpt-4o'"),
    ],
)
def test_inline_rules_that_are_not_a_list_of_tables_are_refused(tmp_path: Path, settings: str, problem: str) -> None:
    config = _write(tmp_path / "br.toml", f'policy = "rules"\npolicy_settings = {{ {settings} }}\n')
    with pytest.raises(ConfigError, match="^" + re.escape("policy: policy 'rules': " + problem) + "$"):
        load_settings(config, env={})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("policy = 'default'\n[policy_settings]\ndim = 64.5\n",
         "policy: policy 'default': setting dim must be an integer, got 64.5"),
        ("policy = 'default:dim=64.5'\n", "policy: policy 'default': setting dim must be an integer, got '64.5'"),
        ("policy = 'linucb'\npolicy_settings = { shared = 'yes' }\n",
         "policy: policy 'linucb': setting shared must be true or false, got 'yes'"),
        ("shadow_policies = ['linucb:alpha=high']\n",
         "shadow_policies: policy 'linucb': setting alpha must be a finite number, got 'high'"),
    ],
)
def test_serve_refuses_a_policy_setting_of_the_wrong_type_in_one_line(
    tmp_path: Path, text: str, message: str
) -> None:
    """`default:dim=64.5` in TOML was a traceback at start (a float reached numpy); a non-integer for an integer
    setting, or any setting of the wrong type, is now one line naming it and exit status 2."""
    from typer.testing import CliRunner

    from bandit_router.cli import app as cli_app

    config = _write(tmp_path / "br.toml", text)
    result = CliRunner().invoke(cli_app, ["serve", "--config", str(config), "--db", str(tmp_path / "r.db")])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == f"bandit-router serve: {message}"
    assert not (tmp_path / "r.db").exists()


CATALOG_NAMES = "gpt-4.1-nano, gpt-4o-mini, llama-3.1-8b-instruct, gemini-2.5-flash, llama-3.1-70b-instruct, " \
    "claude-haiku-4-5, gpt-4o, claude-sonnet-4-5"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("policy = 'fixed:nope'\n", "policy: policy 'fixed:nope' names the model 'nope', which is not in the catalog; "
         f"its models: {CATALOG_NAMES}"),
        ("policy = 'fixed'\npolicy_settings = { model = 'nope' }\n",
         "policy: policy 'fixed:nope' names the model 'nope', which is not in the catalog"),
        ("shadow_policies = ['fixed:gpt-5']\n",
         "shadow_policies: policy 'fixed:gpt-5' names the model 'gpt-5', which is not in the catalog"),
        ("policy = 'fixed:judge'\n[[models]]\nname = 'judge'\ninput_usd_per_mtok = 1\noutput_usd_per_mtok = 1\n"
         "route = false\n[[models]]\nname = 'm'\ninput_usd_per_mtok = 1\noutput_usd_per_mtok = 1\n",
         "policy: policy 'fixed:judge' names the model 'judge', which has route = false"),
    ],
)
def test_serve_refuses_a_fixed_policy_whose_model_is_not_in_the_catalog(
    tmp_path: Path, text: str, message: str
) -> None:
    """`policy = "fixed:nope"` started and sent every request to the cheapest model (a warning in the log was the
    only word); a fixed policy, live or shadow, must name a routable catalog model: one line and exit status 2."""
    from typer.testing import CliRunner

    from bandit_router.cli import app as cli_app

    config = _write(tmp_path / "br.toml", text)
    result = CliRunner().invoke(cli_app, ["serve", "--config", str(config), "--db", str(tmp_path / "r.db")])
    assert result.exit_code == 2, result.output
    assert result.output.strip().startswith(f"bandit-router serve: {message}")
    assert not (tmp_path / "r.db").exists()
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}"):
        load_settings(config, env={})

ROUTE_FALSE_JUDGE = "[[models]]\nname = 'judge'\ninput_usd_per_mtok = 1\noutput_usd_per_mtok = 1\nroute = false\n" \
    "[[models]]\nname = 'gpt-4o'\ninput_usd_per_mtok = 2.5\noutput_usd_per_mtok = 10\n"


@pytest.mark.parametrize(
    ("rules", "catalog", "message"),
    [
        ('default = "gpt-4o"\n[[rules]]\nmodel = "gpt-4o"\nmarkers = ["code"]\n[[rules]]\nmodel = "claude-sonet-4-5"\n'
         "min_tokens = 2000\n", "",
         "rule 2 (min_tokens = 2000) names the model 'claude-sonet-4-5' (did you mean claude-sonnet-4-5?), which is "
         "not in the catalog; its models: "
         f"{CATALOG_NAMES}"),
        ('default = "gpt-4o-minii"\n[[rules]]\nmodel = "gpt-4o"\nregex = "(?i)^translate"\n', "",
         "default names the model 'gpt-4o-minii' (did you mean gpt-4o-mini?), which is not in the catalog"),
        ('[[rules]]\nmodel = "judge"\ncontext = { task = "support" }\n', ROUTE_FALSE_JUDGE,
         "rule 1 (context = {'task': 'support'}) names the model 'judge', which has route = false (a judge or router "
         "model only): it is never chosen"),
    ],
)
def test_a_rule_naming_a_model_outside_the_catalog_is_refused_at_start_naming_the_rule(
    tmp_path: Path, rules: str, catalog: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `rules` policy's rule or default naming a model outside the catalog (a misspelt name) never routed to it
    without a word: the rule was skipped, or the cheapest model replaced the default. As a fixed policy's model,
    each must be a routable catalog model: `serve` (one line, exit status 2, no database created), `check --config`
    and `load_settings` refuse it naming the rule and the model, from a rules file or from inline rules, and so
    does a shadow policy."""
    import tomllib

    from typer.testing import CliRunner

    from bandit_router.cli import app as cli_app

    _serve_never_starts(monkeypatch)
    _write(tmp_path / "rules.toml", rules)
    inline = "".join(f"{k} = {json.dumps(v)}\n" for k, v in tomllib.loads(rules).items() if k == "default")
    inline += "".join("[[policy_settings.rules]]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in rule.items())
                      for rule in tomllib.loads(rules).get("rules", []))
    configs = {
        "file": (f'policy = "rules:file=rules.toml"\n{catalog}', "policy: policy 'rules:file=rules.toml': "),
        "inline": ('policy = "rules"\n[policy_settings]\n' + inline + catalog, "policy: policy 'rules:"),
        "shadow": (f'shadow_policies = ["rules:file=rules.toml"]\n{catalog}',
                   "shadow_policies: policy 'rules:file=rules.toml': "),
    }
    for name, (text, prefix) in configs.items():
        config = _write(tmp_path / f"{name}.toml", text)
        with pytest.raises(ConfigError, match=f"^{re.escape(prefix)}.*{re.escape(message)}"):
            load_settings(config, env={})
        for command, db in (("check", []), ("serve", ["--db", str(tmp_path / "r.db")])):
            result = CliRunner().invoke(cli_app, [command, "--config", str(config), *db])
            assert result.exit_code == 2, result.output
            assert result.output.startswith(f"bandit-router {command}: {prefix}"), result.output
            assert message in result.output, result.output
        assert not (tmp_path / "r.db").exists()


def _toml(value: object) -> str:
    """A TOML value for the inline-rules table of the test above (strings, integers, lists, tables)."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)



def test_serve_on_a_port_in_use_says_so_before_it_recovers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second `make run` beside the first: the service started, recovered its state, and then uvicorn said
    "[Errno 98] error while attempting to bind … address already in use" and exited with status 3, which the
    command-line page does not list. `serve` tries the address first: one line that says what to do, status 2."""
    import socket

    from typer.testing import CliRunner

    from bandit_router.cli import app as cli_app

    monkeypatch.chdir(tmp_path)  # no ./bandit-router.toml
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli_app, ["serve", "--db", str(tmp_path / "r.db"), "--port", str(port)])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (
        f"bandit-router serve: port: cannot listen on 127.0.0.1:{port}: Address already in use (another server, a "
        "bandit-router serve already running? stop it, or choose another --port)")
    assert not (tmp_path / "r.db").exists()  # a refused start creates and migrates nothing (it made an empty one)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_probes_the_addresses_uvicorn_listens_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: str
) -> None:
    """Review: the probe bound only the first address `host` resolves to. Where localhost is ::1 first (many
    distributions), it found [::1] free while uvicorn listens on 127.0.0.1 too (one process: every address) or only
    (workers: IPv4 unless the host has a ':'), held by another server: exit status 3 after the recovery."""
    import socket

    from typer.testing import CliRunner

    from bandit_router.cli import app as cli_app

    resolve = socket.getaddrinfo

    def ipv6_first(host: object, port: object, *args: object, **kwargs: object) -> list[Any]:
        found = resolve(host, port, *args, **kwargs)  # type: ignore[arg-type]
        if host != "localhost":
            return found
        v6 = (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", port, 0, 0))
        return [v6, *(f for f in found if f[0] != socket.AF_INET6)]

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(socket, "getaddrinfo", ipv6_first)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli_app, ["serve", "--db", str(tmp_path / "r.db"), "--host", "localhost",
                                              "--port", str(port), "--workers", workers])
    assert result.exit_code == 2, result.output
    assert f"cannot listen on localhost:{port}: Address already in use (another server" in result.output


def _dual_stack() -> bool:
    """Whether an IPv6 socket without IPV6_V6ONLY takes its port on IPv4 too here (IPv6, net.ipv6.bindv6only = 0)."""
    import socket

    try:
        with open("/proc/sys/net/ipv6/bindv6only", encoding="ascii") as flag, socket.socket(socket.AF_INET6) as s:
            s.bind(("::", 0))
            return flag.read().strip() == "0"
    except OSError:
        return False


@pytest.mark.skipif(not _dual_stack(), reason="needs IPv6 sockets that are dual stack by default (Linux's default)")
@pytest.mark.parametrize("held", ["127.0.0.1", "0.0.0.0"])
def test_serve_on_ipv6_with_workers_finds_the_port_held_on_ipv4(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, held: str
) -> None:
    """Review rev15: with --workers > 1 uvicorn listens on one IPv6 socket without IPV6_V6ONLY (`bind_socket`),
    which takes the port on IPv4 too, but the probe set IPV6_V6ONLY: `serve --host :: --workers 2` found a port
    held on 127.0.0.1 or 0.0.0.0 free, recovered its state, and uvicorn exited with status 3. In one process
    uvloop's `create_server` does set it and listens beside the IPv4 server: that probe still lets it."""
    import asyncio
    import socket

    import uvloop
    from typer.testing import CliRunner

    from bandit_router.cli import app as cli_app
    from bandit_router.service.cli import check_port_free

    async def uvloop_listens(port: int) -> None:
        server = await asyncio.get_running_loop().create_server(asyncio.Protocol, host="::", port=port)
        server.close()
        await server.wait_closed()

    monkeypatch.chdir(tmp_path)
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind((held, 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli_app, ["serve", "--db", str(tmp_path / "r.db"), "--host", "::",
                                              "--port", str(port), "--workers", "2"])
        uvloop.run(uvloop_listens(port))
        check_port_free("::", port, workers=1)
    assert result.exit_code == 2, result.output
    assert f"cannot listen on :::{port}: Address already in use (another server" in result.output


@pytest.mark.parametrize(
    ("host", "port", "refusal", "message"),
    [
        ("10.1.2.3", "8000", None, "cannot listen on 10.1.2.3:8000: Cannot assign requested address (no network "
         "interface of this machine has that address: --host 127.0.0.1 for this machine only, 0.0.0.0 for all"),
        ("127.0.0.1", "80", OSError(13, "Permission denied"), "cannot listen on 127.0.0.1:80: Permission denied "
         "(ports below 1024 need privileges: choose a --port of 1024 or more, e.g. 8000)"),
        # a URL or an address with its port: "cannot resolve" alone, where the fix is a word away
        ("http://127.0.0.1", "8000", None, "(a host name or address, not a URL: --host 127.0.0.1)"),
        ("http://localhost:9000/", "8000", None, "(a host name or address, not a URL: --host localhost --port 9000)"),
        ("127.0.0.1:9000", "8000", None, "(the port is an option of its own: --host 127.0.0.1 --port 9000)"),
        # an IPv6 URL was cut at its first colon ("--host ["), a path dropped the port, brackets had no hint
        ("http://[::1]:9000", "8000", None, "(a host name or address, not a URL: --host ::1 --port 9000)"),
        ("http://localhost:9000/v1", "8000", None, "(a host name or address, not a URL: --host localhost --port 9000)"),
        ("[::1]:9000", "8000", None, "(the port is an option of its own: --host ::1 --port 9000)"),
    ],
)
def test_serve_that_cannot_listen_says_why_in_its_own_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, host: str, port: str, refusal: OSError | None, message: str
) -> None:
    """Review: every failed bind got the hint "another server, a bandit-router serve already running?": an address
    no interface has (`--host 10.1.2.3`) and a privileged port (here the kernel's refusal, since tests may run as
    root) say what to do about them instead."""
    import socket

    from typer.testing import CliRunner

    from bandit_router.cli import app as cli_app

    if refusal is not None:
        def refuse(self: socket.socket, address: object) -> None:
            raise refusal

        monkeypatch.setattr(socket.socket, "bind", refuse)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli_app, ["serve", "--db", str(tmp_path / "r.db"), "--host", host, "--port", port])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert message in text and "another server" not in text


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ('model = "gpt-4o"\nmin_tokens = "2000"', "rule for 'gpt-4o': min_tokens must be an integer, got '2000'"),
        ('model = "gpt-4o"\nmax_chars = 64.5', "rule for 'gpt-4o': max_chars must be an integer, got 64.5"),
        ('model = "gpt-4o"\nmarkers = "code"', "rule for 'gpt-4o': markers must be a list of strings, got 'code'"),
        ('model = "gpt-4o"\ncontext = { task = ["a"] }', "rule for 'gpt-4o': context must be a table of"),
        ("model = 4", "rule for 4: model must be a string, got 4"),
        ('model = "gpt-4o"\nmarkers = ["code", "maths"]', "rule for 'gpt-4o': unknown marker 'maths' (did you mean "
         "math?); the markers are code, math, list, question, non_latin, url"),
    ],
)
def test_a_rule_of_the_wrong_type_is_refused_at_start_not_at_its_first_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rule: str, message: str
) -> None:
    """`min_tokens = "2000"` was accepted and failed (a 500) at the first request the rule was tried on;
    `markers = "code"` became the markers c, o, d, e; a misspelt marker (`maths`) was kept and never matched."""
    conf = _rules_folders(tmp_path, monkeypatch)
    _write(conf / "typed.toml", f'default = "gpt-4o-mini"\n[[rules]]\n{rule}\n')
    for text, where in (('policy = "rules:file=typed.toml"\n', f"rules file {conf / 'typed.toml'}: "),
                        (f'policy = "rules"\n[[policy_settings.rules]]\n{rule}\n', "")):
        with pytest.raises(ConfigError, match=f"^policy: policy 'rules': {re.escape(where + message)}"):
            load_settings(_write(conf / "br.toml", text), env={})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('policy = "rules"\n[policy_settings]\ndefault = "gpt-4o"\n[[policy_settings.rules]]\nmodel = "gpt-4o-mini"\n'
         'markers = ["code"]\n', "unknown keys 'policy', 'policy_settings'; a rules file holds `default = "
         "\"<model>\"` and [[rules]] tables; this is the settings file's form: write [policy_settings]'s default and "
         "[[policy_settings.rules]] as default and [[rules]] at the top level"),
        ('defualt = "gpt-4o"\n', "unknown keys 'defualt' (did you mean default?); a rules file holds `default = "
         "\"<model>\"` and [[rules]] tables"),
    ],
)
def test_a_rules_file_holds_only_default_and_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str,
                                                   message: str) -> None:
    """A rules file written in the settings file's form (the Learning page's example pasted as it is) loaded as no
    rules and no default, without a word, and the built-in rules routed instead; so did any other key."""
    conf = _rules_folders(tmp_path, monkeypatch)
    _write(conf / "other.toml", text)
    expected = f"policy: policy 'rules': rules file {conf / 'other.toml'}: {message}"
    with pytest.raises(ConfigError, match=f"^{re.escape(expected)}$"):
        load_settings(_write(conf / "br.toml", 'policy = "rules:file=other.toml"\n'), env={})


JUDGES_ONLY = ("[[models]]\nname = 'judge'\ninput_usd_per_mtok = 0.15\noutput_usd_per_mtok = 0.6\nroute = false\n"
               "[[models]]\nname = 'chooser'\ninput_usd_per_mtok = 0.1\noutput_usd_per_mtok = 0.4\nroute = false\n")


def test_a_catalog_without_a_routable_model_is_refused_at_start(tmp_path: Path) -> None:
    """A catalog whose every model has `route = false` started the service, and then every POST /v1/route was a
    422 blaming the request's models; `serve` (and `migrate` and `check`, which read the settings) refuse it,
    naming the models, and so does the app's start (with nothing added at run time in its database)."""
    import warnings

    from typer.testing import CliRunner

    from bandit_router.catalog import ModelSpec
    from bandit_router.cli import app as cli_app
    from bandit_router.service import create_app

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*install `httpx2`.*")
        from fastapi.testclient import TestClient

    message = ("every model has route = false (judge, chooser): nothing can be routed; set route = true (the "
               "default) on at least one model")
    judges = (ModelSpec("judge", 0.15, 0.6, route=False), ModelSpec("chooser", 0.1, 0.4, route=False))
    with pytest.raises(ConfigError, match=re.escape(f"models: {message}")), \
            TestClient(create_app(Settings(models=judges, db=tmp_path / "app.db"))):
        pass
    inline = _write(tmp_path / "inline.toml", JUDGES_ONLY)
    _write(tmp_path / "judges.toml", JUDGES_ONLY)
    by_file = _write(tmp_path / "file.toml", "catalog = 'judges.toml'\n")
    for config, key in ((inline, "models"), (by_file, "catalog")):
        for command, db in (("migrate", []), ("check", []), ("serve", ["--db", str(tmp_path / "r.db")])):
            result = CliRunner().invoke(cli_app, [command, "--config", str(config), *db])
            assert result.exit_code == 2, result.output
            assert result.output.strip() == f"bandit-router {command}: {key}: {message}"
    assert not (tmp_path / "r.db").exists()
    one_routable = JUDGES_ONLY.replace("route = false\n", "", 1)
    assert [m.route for m in load_settings(_write(tmp_path / "ok.toml", one_routable), env={}).load_catalog()] == [
        True, False]



@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("policy = 'default:exploration=1'\n[policy_settings]\nexploration = 2\n", {},
         "policy_settings: exploration is also set in policy 'default:exploration=1'; set each setting in one place"),
        ("policy = 'linucb:alpha=1,shared=true'\npolicy_settings = { shared = false, alpha = 2 }\n", {},
         "policy_settings: alpha, shared are also set in policy 'linucb:alpha=1,shared=true'"),
        ("[policy_settings]\nexploration = 2\n", {"BANDIT_ROUTER_POLICY": "default:exploration=1"},
         "BANDIT_ROUTER_POLICY: policy_settings: exploration is also set in policy 'default:exploration=1'"),
        ("", {"BANDIT_ROUTER_POLICY_SETTINGS": '{"exploration": 1, "exploration": 2}'},
         "BANDIT_ROUTER_POLICY_SETTINGS: policy_settings: gives the key 'exploration' twice"),
        ("", {"BANDIT_ROUTER_BUDGETS": '{"tenants": {"acme": {"spend_usd": "5/1d", "spend_usd": "50/1d"}}}'},
         "BANDIT_ROUTER_BUDGETS: budgets: gives the key 'spend_usd' twice"),
        ("policy = 'default:exploration=1,exploration=2'\n", {},
         "policy: default:exploration=1,exploration=2: setting exploration is given twice"),
    ],
)
def test_a_policy_setting_given_twice_is_refused_naming_it(
    tmp_path: Path, text: str, env: dict[str, str], message: str
) -> None:
    """`policy = "default:exploration=1"` with `policy_settings = {exploration = 2}` ran with 2, and a JSON object
    in the environment that gave a key twice kept the last value, silently; both are refused, naming the key."""
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}"):
        load_settings(_write(tmp_path / "br.toml", text), env=env)
    assert load_settings(_write(tmp_path / "ok.toml", "policy = 'default:exploration=1'\n[policy_settings]\n"
                                "floor = 0.05\n"), env={}).build_policy().params.exploration == 1


def _database_with_an_added_model(db: Path, retire: str | None = None) -> tuple[ModelSpec, ModelSpec]:
    """A service's database on the catalog (judge: route = false; first), where `POST /v1/models` added the
    routable model `added` (and `DELETE /v1/models/{retire}` retired one); returns (judge, first)."""
    import warnings

    from bandit_router.service import create_app

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*install `httpx2`.*")
        from fastapi.testclient import TestClient

    judge, first = ModelSpec("judge", 0.15, 0.6, route=False), ModelSpec("first", 0.1, 0.4)
    with TestClient(create_app(Settings(models=(judge, first), db=db, seed=1))) as client:
        while client.get("/readyz").status_code != 200:
            pass
        added = client.post("/v1/models", json={"name": "added", "input_usd_per_mtok": 0.2,
                                                "output_usd_per_mtok": 0.8})
        assert added.status_code == 201, added.text
        if retire is not None:
            assert client.delete(f"/v1/models/{retire}").status_code == 200
    return judge, first


def test_a_catalog_file_without_a_routable_model_starts_when_the_log_added_one(tmp_path: Path) -> None:
    """Review: models added at run time stay across restarts whatever the file says (durability.md), so a file
    whose routable models were all retired or removed, with a routable model added by `POST /v1/models`, started
    and routed before `Settings.check` refused a file without a routable model, and was then refused (the file
    alone was checked): the service's start checks the live catalog, the file with the stored model events."""
    import warnings

    from bandit_router.service import create_app

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*install `httpx2`.*")
        from fastapi.testclient import TestClient

    db = tmp_path / "r.db"
    judge, _ = _database_with_an_added_model(db, retire="first")
    with TestClient(create_app(Settings(models=(judge,), db=db, seed=1))) as client:  # `first` left the file
        while client.get("/readyz").status_code != 200:
            pass
        assert client.post("/v1/route", json={"prompt": "hi"}).json()["model"] == "added"
    with TestClient(create_app(Settings(models=(judge,), db=db, seed=1, policy="fixed:added"))) as client:
        while client.get("/readyz").status_code != 200:
            pass
        assert client.post("/v1/route", json={"prompt": "hi"}).json()["model"] == "added"


def test_the_budgets_judge_and_named_routers_models_are_checked_against_the_live_catalog(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Since models added and retired at run time stay so across restarts, the start checks a fixed or rules
    policy's models against the live catalog (the file with the stored model events), but it checked
    `budgets.fallback_model`, share selectors, `judge_model` and `[[routers]]` models against the file alone: a model
    `POST /v1/models` added was refused. They use the live catalog too: an added model is taken, a name in neither
    refused listing the live models. One `DELETE /v1/models/{name}` retired (`first` here) was then refused too,
    though the DELETE had been taken (200) and the service ran on without it, so the unchanged configuration no
    longer restarted: like a policy's, it starts, with a warning saying what the service does without it."""
    from bandit_router.budgets import BudgetConfig
    from bandit_router.config.routers import RouterAlias
    from bandit_router.service.app import check_live_catalog

    db = tmp_path / "r.db"
    judge, first = _database_with_an_added_model(db, retire="first")
    other = ModelSpec("other", 0.3, 1.2)  # a file model the log did not touch; live: judge, other, added

    def settings(**changes: Any) -> Settings:
        return Settings(models=(judge, first, other), db=db, seed=1, **changes).check(stored_models=True)

    def cascade(model: str) -> tuple[RouterAlias, ...]:
        return (RouterAlias("c", "cascade", (model, "other"), judge="judge"),)

    def changes(model: str) -> list[dict[str, Any]]:
        return [{"budgets": BudgetConfig(fallback_model=model)},
                {"budgets": BudgetConfig.from_strings([f"share:{model}=0.5"])},
                {"judge_model": model}, {"routers": cascade(model)}]

    for change in changes("added"):
        caplog.clear()
        check_live_catalog(settings(**change))
        assert caplog.text == ""
    retired = "was retired at run time (DELETE /v1/models), which a restart keeps whatever the file says"
    for change, says in zip(changes("first"), (
        f"budgets: fallback_model 'first' {retired}; its models: judge, other, added: while a budget is exhausted "
        "the guard rails take the request's cheapest model",
        "budgets: share:first=0.5: picks only models retired at run time (DELETE /v1/models), which a restart keeps "
        "whatever the file says: first; the share picks no active model and never binds",
        f"judge_model: 'first' {retired}; its models: judge, other, added: the judge goes on calling it",
        "routers: 'c': ['first'] retired at run time (DELETE /v1/models), which a restart keeps whatever the file "
        "says: it answers with ['other'] until a model of that name is added",
    ), strict=True):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="bandit_router"):
            check_live_catalog(settings(**change))
        assert says in caplog.text, caplog.text
        with caplog.at_level(logging.WARNING, logger="bandit_router"):
            check_live_catalog(settings(**change), warn=False)  # `serve` leaves it to the server's start
        assert caplog.text.count(says) == 1
    for change, says in zip(changes("gpt-6"), (
        "budgets: fallback_model 'gpt-6' is not in the catalog; its models: judge, other, added",
        "budgets: share:gpt-6=0.5: no active model is picked by that selector (models with route = false do not "
        "count: they are never chosen); its routable models: other, added",
        "judge_model: 'gpt-6' is not in the catalog; its models: judge, other, added",
        "routers: 'c': not in the catalog: ['gpt-6']; its models: judge, other, added",
    ), strict=True):
        with pytest.raises(ConfigError) as refused:
            check_live_catalog(settings(**change))
        assert str(refused.value) == says
    with pytest.raises(ConfigError, match=re.escape("judge_model: 'gone' is not in the catalog; its models: judge, "
                                                    "first")):
        Settings(models=(judge, first), judge_model="gone").check()


def test_the_files_budgets_are_not_checked_when_stored_targets_replace_them(tmp_path: Path) -> None:
    """A PUT /v1/budgets stores targets that replace the file's `[budgets]` at every start; the start still
    refused the file's `fallback_model` naming a model in neither catalog, a setting not in effect. It is checked
    only while no budget targets are stored."""
    from bandit_router.budgets import BudgetConfig
    from bandit_router.log.budget_state import BUDGETS_CONFIG
    from bandit_router.service.app import check_live_catalog
    from bandit_router.store import open_store

    db = tmp_path / "r.db"
    judge, first = _database_with_an_added_model(db)
    stale = Settings(models=(judge, first), db=db, seed=1, budgets=BudgetConfig(fallback_model="gpt-6")
                     ).check(stored_models=True)
    with pytest.raises(ConfigError, match="budgets: fallback_model 'gpt-6' is not in the catalog"):
        check_live_catalog(stale)
    store = open_store(db)
    try:
        with store.write() as tx:
            tx.set_meta(BUDGETS_CONFIG, json.dumps(BudgetConfig.from_strings(["avg_cost_usd=0.001"]).to_mapping()))
    finally:
        store.close()
    assert [m.name for m in check_live_catalog(stale).active] == ["judge", "first", "added"]


def test_a_live_catalog_whose_routable_models_were_retired_at_run_time_says_that_they_stay_retired() -> None:
    """A file model retired at run time stays retired whatever the file says: when the live catalog has no
    routable model left because of that, setting `route = true` is no fix, and the message says what is."""
    from bandit_router.catalog import ModelSpec

    judge, gone = ModelSpec("judge", 0.15, 0.6, route=False), ModelSpec("gone", 0.1, 0.4)
    settings = Settings(models=(judge, gone))
    with pytest.raises(ConfigError, match=re.escape(
            "models: every model has route = false (judge): nothing can be routed; set route = true (the default) "
            "on at least one model; retired at run time, which a restart keeps whatever the file says: gone (add "
            "another routable model to the catalog)")):
        settings.check_catalog([judge], [gone])
    settings.check_catalog([judge, ModelSpec("added", 0.2, 0.8)], [gone])


def _serve_never_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """`serve` fails the test if it gets past its checks, rather than serve on 127.0.0.1:8000 until killed."""
    import uvicorn

    def started(*args: object, **kwargs: object) -> None:
        raise AssertionError("serve started")

    monkeypatch.setattr(uvicorn, "run", started)


def test_serve_check_and_migrate_config_check_the_catalog_with_the_models_its_database_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`serve` checks the live catalog before it starts the server: on a database where `POST /v1/models` added a
    model, a fixed policy naming a model that is nowhere is one line and exit status 2 listing the models of the
    file and of the log (that it gets past the check with the added one: test_server_process). `check --config`
    and `migrate --config` check as `serve` does: a file whose only model has route = false, beside that database,
    is what `serve` serves (they checked the file alone and refused it); without the database, the file alone is
    checked (and refused: nothing is created)."""
    from typer.testing import CliRunner

    from bandit_router.cli import app as cli_app

    _serve_never_starts(monkeypatch)
    db = tmp_path / "r.db"
    _database_with_an_added_model(db)
    judge_only = "[[models]]\nname = 'judge'\ninput_usd_per_mtok = 0.15\noutput_usd_per_mtok = 0.6\nroute = false\n"
    config = _write(tmp_path / "br.toml", f"policy = 'fixed:gpt-6'\n{judge_only}")
    result = CliRunner().invoke(cli_app, ["serve", "--config", str(config), "--db", str(db)])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == ("bandit-router serve: policy: policy 'fixed:gpt-6' names the model 'gpt-6', "
                                     "which is not in the catalog; its models: judge, added")
    config = _write(tmp_path / "br.toml", f"db = 'r.db'\n{judge_only}")  # (with --db they do not read the file)
    for command, says in (("check", "verdict: intact"), ("migrate", "schema version")):
        result = CliRunner().invoke(cli_app, [command, "--config", str(config)])
        assert result.exit_code == 0 and says in result.output, result.output
    config = _write(tmp_path / "br.toml", f"db = 'r.db'\npolicy = 'fixed:gpt-6'\n{judge_only}")
    for command in ("check", "migrate"):
        result = CliRunner().invoke(cli_app, [command, "--config", str(config)])
        assert result.exit_code == 2, result.output
        assert result.output.strip() == (f"bandit-router {command}: policy: policy 'fixed:gpt-6' names the model "
                                         "'gpt-6', which is not in the catalog; its models: judge, added")
    config = _write(tmp_path / "br.toml", f"db = 'new.db'\n{judge_only}")
    for command in ("check", "migrate"):
        result = CliRunner().invoke(cli_app, [command, "--config", str(config)])
        assert result.exit_code == 2, result.output
        assert result.output.strip() == (f"bandit-router {command}: models: every model has route = false (judge): "
                                         "nothing can be routed; set route = true (the default) on at least one model")
        assert not (tmp_path / "new.db").exists()


def test_check_and_migrate_check_the_config_they_are_given_with_db_against_that_database(tmp_path: Path) -> None:
    """`check --config FILE --db DB` and `migrate --config FILE --db DB` read neither the file nor its settings: a
    configuration that `serve --config FILE --db DB` refuses (a policy naming a model that is nowhere, an unknown
    key) was "verdict: intact" and migrated. They check it as `serve` does, against the models DB holds (a model
    that only `POST /v1/models` added there is taken), as they do without --db against the configured one; --db
    alone reads no configuration, as before."""
    from typer.testing import CliRunner

    from bandit_router.cli import app as cli_app

    db = tmp_path / "r.db"
    _database_with_an_added_model(db)
    judge_only = "[[models]]\nname = 'judge'\ninput_usd_per_mtok = 0.15\noutput_usd_per_mtok = 0.6\nroute = false\n"
    elsewhere = "db = 'elsewhere.db'\n"  # the configured database, not the one checked
    for command, says in (("check", "verdict: intact"), ("migrate", "schema version")):
        refused = _write(tmp_path / "br.toml", f"{elsewhere}policy = 'fixed:gpt-6'\n{judge_only}")
        result = CliRunner().invoke(cli_app, [command, "--config", str(refused), "--db", str(db)])
        assert result.exit_code == 2, result.output
        assert result.output.strip() == (f"bandit-router {command}: policy: policy 'fixed:gpt-6' names the model "
                                         "'gpt-6', which is not in the catalog; its models: judge, added")
        unknown = _write(tmp_path / "br.toml", f"{elsewhere}polcy = 'random'\n")
        result = CliRunner().invoke(cli_app, [command, "--config", str(unknown), "--db", str(db)])
        assert result.exit_code == 2 and "unknown keys 'polcy'" in result.output, result.output
        taken = _write(tmp_path / "br.toml", f"{elsewhere}policy = 'fixed:added'\n{judge_only}")
        result = CliRunner().invoke(cli_app, [command, "--config", str(taken), "--db", str(db)])
        assert result.exit_code == 0 and says in result.output, result.output
        result = CliRunner().invoke(cli_app, [command, "--db", str(db)], env={"BANDIT_ROUTER_CONFIG": str(unknown)})
        assert result.exit_code == 0 and says in result.output, result.output
    assert not (tmp_path / "elsewhere.db").exists()


def test_check_config_checks_the_models_named_against_the_file_when_the_database_cannot_be_read(
    tmp_path: Path
) -> None:
    """`check --config` beside a database it cannot read (it reports why) skipped the live catalog's checks and with
    them the checks of the models the judge, the budgets and the named routers name, which `check()` makes on the
    catalog file: a `judge_model` in no catalog passed. They run on the catalog file then, and what they refuse is
    a note before the database's report (`test_check_config_on_a_damaged_database_prints_its_report`). The note
    said a refused model was one "a model POST /v1/models added is not in", which a typo is not, and named only
    the first refusal without saying the check stops there: it says both now."""
    from typer.testing import CliRunner

    from bandit_router.cli import app as cli_app

    (tmp_path / "bad.db").write_bytes(b"not a sqlite file at all, garbage " * 8)
    for table, says in (
        ("[judge]\njudge_model = 'nope'\n", "judge_model: 'nope' is not in the catalog"),
        ("[budgets]\nfallback_model = 'nope'\n", "budgets: fallback_model 'nope' is not in the catalog"),
    ):
        config = _write(tmp_path / "br.toml", f"db = 'bad.db'\n{table}")
        result = CliRunner().invoke(cli_app, ["check", "--config", str(config)])
        assert result.exit_code == 1 and "verdict: NOT intact" in result.output, result.output
        assert result.output.startswith("bandit-router check: not checked against the database, which cannot be "
                                        "read"), result.output
        assert (f"the catalog file alone, which stops at its first problem (a model it names may have been added by "
                f"POST /v1/models, which only the database holds): {says}; its models: ") in result.output


def test_check_config_on_a_damaged_database_prints_its_report(tmp_path: Path) -> None:
    """`check --config` on a database whose model events cannot all be read checked the judge model, which
    `POST /v1/models` added (so `serve` takes it), against the catalog file alone and refused it: "judge_model:
    'added' is not in the catalog", exit status 2, and the database's report, why `check` was run, never printed.
    The refusal is a note; the report and its exit status (1: not intact) follow."""
    import sqlite3

    from typer.testing import CliRunner

    from bandit_router.cli import app as cli_app

    db = tmp_path / "r.db"
    _database_with_an_added_model(db)
    with sqlite3.connect(db) as conn:
        assert conn.execute("UPDATE model_events SET spec = '{not json' WHERE name = 'added'").rowcount == 1
    config = _write(tmp_path / "br.toml", "db = 'r.db'\n[judge]\njudge_model = 'added'\n"
                    "[[models]]\nname = 'judge'\ninput_usd_per_mtok = 0.15\noutput_usd_per_mtok = 0.6\n")
    result = CliRunner().invoke(cli_app, ["check", "--config", str(config)])
    assert result.exit_code == 1, result.output
    assert "1 cannot be read" in result.output and "(add 'added') cannot be read" in result.output
    assert "verdict: NOT intact: model events that no start can apply" in result.output
    assert "not checked against the database, which cannot be read" in result.output
    assert "judge_model: 'added' is not in the catalog" in result.output
    result = CliRunner().invoke(cli_app, ["check", "--config", str(config), "--json"])
    assert result.exit_code == 1 and json.loads(result.stdout)["model_events"]["unreadable"], result.output


def test_serve_checks_the_judges_upstream_on_the_live_catalog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`serve` checked that the judge's model can be called on the catalog file alone, before the live catalog: a
    judge model `POST /v1/models` added (no base_url) got past it to fail in the application's start-up, and a
    file model retired at run time was blamed on its upstream. It checks the live catalog first, then the live
    models' upstreams: one line and exit status 2 for each, naming the model. (A judge model retired at run time is
    no longer refused: the judge still calls it, so its upstream is checked as an active one's is.)"""
    from typer.testing import CliRunner

    from bandit_router.cli import app as cli_app

    _serve_never_starts(monkeypatch)
    db = tmp_path / "r.db"
    _database_with_an_added_model(db, retire="first")  # live: judge, added
    models = ("[[models]]\nname = 'judge'\ninput_usd_per_mtok = 0.15\noutput_usd_per_mtok = 0.6\nroute = false\n"
              "[[models]]\nname = 'first'\ninput_usd_per_mtok = 0.1\noutput_usd_per_mtok = 0.4\n")
    for judge, says in (
        ("added", "judge_model: 'added' has no upstream: give it a base_url, or set default_base_url"),
        ("first", "judge_model: 'first' has no upstream: give it a base_url, or set default_base_url"),
    ):
        config = _write(tmp_path / "br.toml", f"[judge]\njudge_model = '{judge}'\njudge_sample_rate = 0.5\n{models}")
        result = CliRunner().invoke(cli_app, ["serve", "--config", str(config), "--db", str(db)])
        assert result.exit_code == 2, (result.output, result.exception)
        assert result.output.strip() == f"bandit-router serve: {says}"


def test_a_policy_named_with_inline_rules_is_a_spec_string(tmp_path: Path) -> None:
    """A configured policy with policy_settings is named as a spec string names it, and that name is stored in
    every decision row (`policy`); inline rules (`[[policy_settings.rules]]`, a documented form) were named by the
    repr of their list of dicts, commas and `=` inside, which is no spec string (parse_spec refused it) and grew
    each decision row by the size of the rules (review of 6e8e33f): a structure is named by a short digest of it,
    the same for the same rules and another for other rules."""
    from bandit_router.policies import parse_spec

    text = ('policy = "rules"\n[policy_settings]\ndefault = "gpt-4o-mini"\n[[policy_settings.rules]]\n'
            'regex = "(?i)\\\\b(def|import|class)\\\\b"\nmodel = "gpt-4o"\n[[policy_settings.rules]]\n'
            'min_chars = 2000\nmodel = "claude-sonnet-4-5"\n')
    name = load_settings(_write(tmp_path / "br.toml", text), env={}).build_policy().name
    assert parse_spec(name)[0] == "rules" and len(name) <= 64, name
    assert name == load_settings(_write(tmp_path / "same.toml", text), env={}).build_policy().name
    other = load_settings(_write(tmp_path / "other.toml", text.replace("2000", "3000")), env={}).build_policy().name
    assert other != name and parse_spec(other)[1]["default"] == "gpt-4o-mini", (name, other)


def test_retention_shorter_than_the_reward_window_is_refused() -> None:
    """Retention deleted decisions whose reward window was still open (measured: with retention_days = 2 s and a 4 s
    window, two of three decisions were gone before their default reward was learned)."""
    with pytest.raises(ConfigError, match=r"retention_days: .* reward_window_s \(86400 s\)"):
        Settings(retention_days=1, reward_window_s=86400, default_reward=0.5).check()
    assert Settings(retention_days=2, reward_window_s=86400, default_reward=0.5).check()


def test_a_refused_start_creates_and_migrates_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The start checks the catalog's models before it creates or migrates the database (review of eac77b2: it
    prepared the schema first): `serve` and the app refusing a fixed policy on a model that is nowhere leave a
    missing file missing, an empty file empty, and a database of the previous schema at that schema (a one-way
    migration by a start that never ran), whose model events it reads as they are (the model `POST /v1/models`
    added is listed, and a policy on it starts, migrating then)."""
    import sqlite3
    import warnings

    from typer.testing import CliRunner

    from bandit_router.cli import app as cli_app
    from bandit_router.service import create_app
    from bandit_router.store import SCHEMA_VERSION
    from tests.old_schema import as_previous_schema

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*install `httpx2`.*")
        from fastapi.testclient import TestClient

    _serve_never_starts(monkeypatch)
    refusal = "policy: policy 'fixed:nope' names the model 'nope', which is not in the catalog; its models: "

    def refused(db: Path) -> str:
        app = create_app(Settings(policy="fixed:nope", db=db, seed=1))  # raises at startup, not here
        with pytest.raises(ConfigError, match=f"^{re.escape(refusal)}"), TestClient(app):
            pass
        config = _write(tmp_path / "br.toml", "policy = 'fixed:nope'\n")
        result = CliRunner().invoke(cli_app, ["serve", "--config", str(config), "--db", str(db)])
        assert result.exit_code == 2 and result.output.startswith(f"bandit-router serve: {refusal}"), result.output
        return result.output

    missing, empty, old = tmp_path / "missing.db", tmp_path / "empty.db", tmp_path / "old.db"
    refused(missing)
    assert not missing.exists()
    empty.touch()
    refused(empty)
    assert empty.stat().st_size == 0
    with TestClient(create_app(Settings(db=old, seed=1))) as client:
        while client.get("/readyz").status_code != 200:
            pass
        added = client.post("/v1/models", json={"name": "added", "input_usd_per_mtok": 0.2,
                                                "output_usd_per_mtok": 0.8})
        assert added.status_code == 201, added.text
    as_previous_schema(str(old), "checkpoint_parts", SCHEMA_VERSION - 1)

    def version() -> str:
        with sqlite3.connect(old) as conn:
            return str(conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])

    assert refused(old).strip().endswith(", added")
    assert version() == str(SCHEMA_VERSION - 1)
    with TestClient(create_app(Settings(policy="fixed:added", db=old, seed=1))) as client:
        while client.get("/readyz").status_code != 200:
            pass
        assert client.post("/v1/route", json={"prompt": "hi"}).json()["model"] == "added"
    assert version() == str(SCHEMA_VERSION)


def test_a_rebuilt_policy_set_checks_its_policies_against_the_catalog_and_the_log(tmp_path: Path) -> None:
    """The routers are built without checking their policy against the catalog file (the log may add the model a
    fixed or rules policy names), so `rebuild_router`, `rebuild_policies` and the service's recovery check it once
    the log is applied: a fixed policy on a model that is nowhere is a `ConfigError` (it routed every request to
    the cheapest model, without a word: review of eac77b2), one on a model the log added or retired is not."""
    from bandit_router.catalog import ModelSpec
    from bandit_router.log import rebuild_policies, rebuild_router
    from bandit_router.service.engine import Engine
    from bandit_router.store import ModelAction
    from bandit_router.store.location import open_store

    db = tmp_path / "z.db"
    store = open_store(db)
    store.prepare()
    models = (ModelSpec("a", 0.1, 0.4), ModelSpec("b", 1.0, 2.0))
    with store.write() as tx:
        tx.insert_model_event(ModelAction.ADD, "added", ModelSpec("added", 0.2, 0.8))
        tx.insert_model_event(ModelAction.RETIRE, "b", None)
    try:
        for policy in ("fixed:added", "fixed:b"):
            settings = Settings(policy=policy, models=models, db=db, seed=1)
            assert rebuild_router(settings, store).policy.name == policy
        settings = Settings(policy="fixed:nope", models=models, db=db, seed=1)
        message = "policy 'fixed:nope' names the model 'nope', which is not in the catalog; its models: "
        with pytest.raises(ConfigError, match=f"^policy: {re.escape(message)}a, added, b$"):
            rebuild_router(settings, store)
        shadow = Settings(shadow_policies=("fixed:nope",), models=models, db=db, seed=1)
        with pytest.raises(ConfigError, match=f"^shadow_policies: {re.escape(message)}"):
            rebuild_policies(shadow, store)
        engine = Engine(settings, store)
        with pytest.raises(ConfigError, match=f"^policy: {re.escape(message)}"):
            engine._recover()
    finally:
        store.close()


def test_what_settings_took_before_their_types_were_checked_is_still_taken() -> None:
    """`check_types` refused what `Settings` took and served with before: the catalog itself
    (`Settings(models=default_catalog())`, as `Router(default_catalog())`), a generator of specs, a set of hosts
    ("must be a list of ModelSpecs, got Catalog"), a numpy boolean ("must be true or false, got bool np.False_").
    Each is taken as the tuple or the bool it stands for."""
    import numpy as np

    from bandit_router import default_catalog

    catalog = default_catalog()
    settings = Settings(models=catalog, allowed_hosts={"a.example"}, access_log=np.bool_(True),
                        shadow_policies=(name for name in ["linucb"]))
    assert settings.models == tuple(catalog) and type(settings.models) is tuple
    assert settings.allowed_hosts == ("a.example",) and settings.shadow_policies == ("linucb",)
    assert settings.access_log is True
    with pytest.raises(ConfigError, match=r"models: must be a list of ModelSpecs, got str 'gpt-4o' in the list"):
        Settings(models=iter(["gpt-4o"]))  # an iterable's items are still checked
