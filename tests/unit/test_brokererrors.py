"""Broker failures and broker settings as one line a person can act on (no broker needed)."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest
from amqp.exceptions import AccessRefused, NotFound
from kombu.exceptions import OperationalError

from worker.brokererrors import ConfigError, check_broker_settings, describe, redact
from worker.config import Settings

URL = "amqp://ops:s3cret@rabbit-1.example:5672/prod"


def test_redact_hides_the_password_only():
    assert redact(URL) == "amqp://ops:***@rabbit-1.example:5672/prod"
    assert redact("amqps://rabbit:5671//") == "amqps://rabbit:5671//"
    assert redact("amqp://user@rabbit//") == "amqp://user@rabbit//"
    assert redact("amqp://u:p@s/s@rabbit:5672//") == "amqp://u:***@rabbit:5672//"
    assert redact("amqp://rabbit:5672//") == "amqp://rabbit:5672//"


def _wrapped(exc: BaseException) -> OperationalError:
    """As kombu raises it: its own error, caused by the socket's."""
    try:
        raise exc
    except BaseException as inner:
        try:
            raise OperationalError(str(inner)) from inner
        except OperationalError as outer:
            return outer


@pytest.mark.parametrize(
    ("exc", "what", "check"),
    [
        (ConnectionRefusedError(111, "Connection refused"), "connection refused", "RabbitMQ"),
        (socket.gaierror(-2, "Name or service not known"), "host name not found", "DNS"),
        (
            AccessRefused(
                "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN",
                method_sig=(0, 0),
            ),
            "authentication failed",
            "password",
        ),
        (ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"), "TLS", "5671"),
        (TimeoutError("timed out"), "no answer", "AMQP port"),
        (OSError("Server unexpectedly closed connection"), "closed the connection", "amqps://"),
        (NotFound("NOT_FOUND - no exchange 'vm.ops' in vhost '/'"), "not found", "broker setup"),
    ],
)
def test_each_failure_is_one_line_naming_the_url_and_what_to_check(exc, what, check):
    for e in (exc, _wrapped(exc)):
        line = describe(e, URL)
        assert "\n" not in line
        assert "amqp://ops:***@rabbit-1.example:5672/prod" in line and "s3cret" not in line
        assert what in line and check in line, line


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"broker": "amqp://guest:pw@rabbit:56x2//"}, "Port"),
        ({"broker": "http://guest:pw@rabbit//"}, "amqp://"),
        ({"broker": "amqp://guest:pw@rabbit//", "ssl_ca": "/etc/hostname"}, "not amqps"),
        ({"broker": "amqps://guest:pw@rabbit//;amqp://guest:pw@other//"}, "mix"),
        ({"broker": "amqps://guest:pw@rabbit//", "ssl_ca": "/nonexistent/ca.pem"}, "no such"),
        ({"broker": " ; "}, "no URL"),
    ],
)
def test_settings_that_cannot_work_are_one_line_config_errors(settings, words):
    with pytest.raises(ConfigError) as err:
        check_broker_settings(Settings(**settings))
    assert words in str(err.value) and "\n" not in str(err.value)
    assert "pw@" not in str(err.value)


def test_good_settings_pass(tmp_path: Path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-")
    check_broker_settings(Settings(broker="amqp://guest:guest@localhost:5672//"))
    check_broker_settings(Settings(broker="amqps://a:b@r1:5671//;amqps://a:b@r2:5671//", ssl_ca=ca))
