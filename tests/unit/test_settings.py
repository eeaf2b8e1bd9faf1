"""Settings: flag over environment over default, and errors that name the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from scheduler.settings import Settings, SettingsError, load, parse_weights


def test_defaults_are_embedded() -> None:
    settings = load({}, env={})
    assert settings == Settings()
    assert settings.database_url == "" and settings.listen == "127.0.0.1:50051"


def test_flag_wins_over_environment_which_wins_over_default() -> None:
    env = {"HEAT_LISTEN": "0.0.0.0:6000", "HEAT_DATA_DIR": "/srv/heat", "HEAT_INSECURE": "1"}
    assert load({}, env=env).listen == "0.0.0.0:6000"
    settings = load({"listen": "[::]:7000"}, env=env)
    assert settings.listen == "[::]:7000" and settings.data_dir == Path("/srv/heat")


@pytest.mark.parametrize(
    ("flags", "env", "named", "accepted"),
    [
        ({"listen": "localhost"}, {}, "--listen", "127.0.0.1:50051"),
        ({}, {"HEAT_LISTEN": "1.2.3.4:99999"}, "HEAT_LISTEN", "host:port"),
        ({}, {"HEAT_DATABASE_URL": "mysql://x"}, "HEAT_DATABASE_URL", "postgresql://"),
        ({}, {"HEAT_LOG_LEVEL": "loud"}, "HEAT_LOG_LEVEL", "DEBUG, INFO"),
        ({"shutdown_grace": "-1"}, {}, "--shutdown-grace", "negative"),
        ({}, {"HEAT_MAX_DAG_NODES": "many"}, "HEAT_MAX_DAG_NODES", "whole number"),
        ({}, {"HEAT_LOG_FORMAT": "xml"}, "HEAT_LOG_FORMAT", "text, json"),
        ({}, {"HEAT_FAIRNESS_WEIGHTS": "a=3,b"}, "HEAT_FAIRNESS_WEIGHTS", "KEY=WEIGHT"),
        ({"fairness_weights": "a=0"}, {}, "--fairness-weights", "above 0"),
        ({"priority_ratio": "0.5"}, {}, "--priority-ratio", "from 1"),
        ({}, {"HEAT_STRICT_PRIORITY": "maybe"}, "HEAT_STRICT_PRIORITY", "true or false"),
        ({"fairness_label": ""}, {}, "--fairness-label", "1 to 63"),
    ],
)
def test_bad_values_name_the_setting_and_what_is_accepted(
    flags: dict[str, str], env: dict[str, str], named: str, accepted: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        load(flags, env=env)
    assert named in str(caught.value) and accepted in str(caught.value)


def test_values_are_normalised() -> None:
    settings = load({"log_level": "debug", "shutdown_grace": "2.5s"}, env={})
    assert settings.log_level == "DEBUG" and settings.shutdown_grace == 2.5


def test_plaintext_off_loopback_is_refused_unless_insecure() -> None:
    with pytest.raises(SettingsError, match=r"not loopback.*--insecure"):
        load({"listen": "0.0.0.0:50051"}, env={})
    assert load({"listen": "0.0.0.0:50051", "insecure": "true"}, env={}).insecure
    for loopback in ("127.0.0.1:1", "localhost:1", "[::1]:1"):
        settings = load({"listen": loopback}, env={})
        assert settings.loopback and settings.reflection_on
    assert not load({"listen": "0.0.0.0:1", "insecure": "1"}, env={}).reflection_on
    assert load({"listen": "0.0.0.0:1", "insecure": "1", "reflection": "on"}, env={}).reflection_on


def test_tls_settings_go_together(tmp_path: Path) -> None:
    pem = tmp_path / "x.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\n")
    with pytest.raises(SettingsError, match=r"server_cert.*server_key"):
        load({"server_cert": str(pem)}, env={})
    with pytest.raises(SettingsError, match=r"client_ca.*needs TLS"):
        load({"client_ca": str(pem)}, env={})
    with pytest.raises(SettingsError, match=r"HEAT_SERVER_CERT.*not a file"):
        load({}, env={"HEAT_SERVER_CERT": str(tmp_path / "missing.pem")})
    settings = load(
        {"server_cert": str(pem), "server_key": str(pem), "listen": "0.0.0.0:1"}, env={}
    )
    assert settings.tls and not settings.reflection_on


def test_the_dispatch_order_settings() -> None:
    settings = load(
        {"fairness_weights": " finance=3, research = 0.5 ,", "strict_priority": "yes"},
        env={"HEAT_FAIRNESS_LABEL": "tenant", "HEAT_CRITICAL_PATH": "off"},
    )
    assert parse_weights(settings.fairness_weights) == (("finance", 3.0), ("research", 0.5))
    assert settings.fairness_label == "tenant" and settings.priority_ratio == 10.0
    assert settings.strict_priority and not settings.critical_path
