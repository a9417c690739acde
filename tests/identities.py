"""Broker identities for the security tests: users made with `vmworker broker grant` (the real
command, through click's runner), always revoked at the end of the test."""

from __future__ import annotations

import re
from contextlib import suppress
from typing import Any
from urllib.parse import quote

from click.testing import CliRunner

from worker.brokeradmin import Rabbitmqctl
from worker.cli import main

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[")


class Identities:
    """Grants users on a broker node (the shared one by default) and revokes them all."""

    def __init__(self, base_url: str, ctl: Rabbitmqctl | None = None) -> None:
        self.base_url = base_url  # amqp://guest:guest@HOST:PORT/VHOST: user and password replaced
        self.ctl = ctl or Rabbitmqctl()
        self.users: list[str] = []

    def grant(self, *args: str) -> str:
        """`vmworker broker grant ARGS` (a password is generated); returns the user's URL."""
        node = ["--node", self.ctl.node] if self.ctl.node else []
        res = CliRunner().invoke(
            main, ["broker", "grant", *args, *node], catch_exceptions=False, env=self._env()
        )
        assert res.exit_code == 0, res.output
        user = args[args.index("--host") + 1] if "--host" in args else args[1]
        self.users.append(user)
        # the password is printed once, on a line of its own (a worker running in this
        # process may log to the same stdout)
        lines = [ln for ln in res.stdout.splitlines() if ln and not LOG_LINE.match(ln)]
        if "--certificate-only" in args:
            assert lines == [], res.output
            return self.base_url.split("://", 1)[0] + "://" + self.base_url.split("@", 1)[1]
        assert len(lines) == 1 and " " not in lines[0], res.output
        return self.url(user, lines[0])

    def _env(self) -> dict[str, str]:
        """The environment the CLI's own rabbitmqctl runs with (a private node's, if any)."""
        return {**(self.ctl.env or {}), "VMWORKER_RABBITMQCTL": self.ctl.executable}

    def url(self, user: str, password: str) -> str:
        scheme, rest = self.base_url.split("://", 1)
        where = rest.split("@", 1)[1]
        return f"{scheme}://{quote(user, safe='')}:{quote(password, safe='')}@{where}"

    def revoke_all(self) -> None:
        for user in self.users:
            with suppress(Exception):
                res = CliRunner().invoke(
                    main,
                    [
                        "broker",
                        "revoke",
                        "--user",
                        user,
                        *(["--node", self.ctl.node] if self.ctl.node else []),
                    ],
                    env=self._env(),
                )
                assert res.exit_code == 0, res.output
        self.users.clear()


def refused(exc: Any) -> bool:
    """True for the broker's 403 ACCESS_REFUSED."""
    return getattr(exc, "reply_code", None) == 403 or "ACCESS_REFUSED" in str(exc)
