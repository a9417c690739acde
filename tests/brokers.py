"""Private RabbitMQ nodes for tests that break the broker (restart, failover, TLS, clusters).

The shared broker on 127.0.0.1:5672 is used by everyone at once and is never stopped by a test.
A `RabbitNode` is a node of its own: its own node name, AMQP and distribution ports, data, log
and config directories under the test's tmp dir, and its own HOME (holding the Erlang cookie,
the same for every private node of this test process so that two of them can form a cluster).
It runs as a child process of the test (in its own session, so it can always be killed), and
`rabbitmqctl -n <node>` drives it.

    node = RabbitNode(tmp_path).start()
    conn = Connection(node.url)
    node.stop_app(); node.start_app()
    node.stop()

Fixture: `rabbit_node` (tests/conftest.py) makes nodes and always stops them.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import time
import uuid
from contextlib import suppress
from pathlib import Path
from typing import Any

RABBIT_BIN = Path(os.environ.get("VMWORKER_TEST_RABBIT_BIN", "/usr/lib/rabbitmq/bin"))

# one cookie for every private node started by this process (a cluster needs a shared one)
_COOKIE = secrets.token_hex(16).upper()


def free_port() -> int:
    """A TCP port nothing listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


class RabbitError(RuntimeError):
    pass


class RabbitNode:
    """One private RabbitMQ node.

    - `name`: the short name (node is `<name>@localhost`); default `vmwt-<random>`.
    - `port`: the AMQP port; default a free one. The distribution port is always a free one.
    - `tls`: None, or a dict with `cacertfile`, `certfile`, `keyfile` and optionally `port`
      (default a free one), `verify` (`verify_peer`/`verify_none`, default `verify_peer`) and
      `fail_if_no_peer_cert` (default False): adds an AMQPS listener (`.tls_port`, `.tls_url`).
    - `extra_conf`: lines appended to the node's rabbitmq.conf (new-style sysctl format).
    - `plugins`: plugins to enable (e.g. `rabbitmq_auth_mechanism_ssl` for EXTERNAL login).
    - `advanced`: the node's advanced.config (Erlang terms), e.g.
      `[{rabbit, [{channel_tick_interval, 1000}]}].`
    """

    def __init__(
        self,
        tmp_path: Path,
        name: str | None = None,
        port: int | None = None,
        tls: dict[str, Any] | None = None,
        extra_conf: str = "",
        plugins: list[str] | None = None,
        advanced: str = "",
    ) -> None:
        self.name = name or f"vmwt-{uuid.uuid4().hex[:8]}"
        self.advanced = advanced
        self.plugins = list(plugins or [])
        self.nodename = f"{self.name}@localhost"
        self.port = port or free_port()
        self.dist_port = free_port()
        self.tls = dict(tls) if tls else None
        self.tls_port: int | None = None
        if self.tls is not None:
            self.tls_port = int(self.tls.get("port") or free_port())
        self.extra_conf = extra_conf
        self.base = Path(tmp_path) / f"rabbit-{self.name}"
        self.home = self.base / "home"
        self.log_dir = self.base / "log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._console: Any = None

    # -- addresses ---------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    @property
    def tls_url(self) -> str:
        if self.tls_port is None:
            raise RabbitError("this node has no TLS listener")
        return f"amqps://guest:guest@localhost:{self.tls_port}//"

    # -- files ---------------------------------------------------------------------------
    def _write_files(self) -> None:
        for d in (self.base, self.home, self.log_dir, self.base / "mnesia"):
            d.mkdir(parents=True, exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(_COOKIE)
            cookie.chmod(0o400)
        conf = [
            f"listeners.tcp.default = 127.0.0.1:{self.port}",
            "loopback_users.guest = true",
            "log.console = false",
            "log.file.level = info",
        ]
        if self.tls is not None:
            conf += [
                f"listeners.ssl.default = 127.0.0.1:{self.tls_port}",
                f"ssl_options.cacertfile = {self.tls['cacertfile']}",
                f"ssl_options.certfile = {self.tls['certfile']}",
                f"ssl_options.keyfile = {self.tls['keyfile']}",
                f"ssl_options.verify = {self.tls.get('verify', 'verify_peer')}",
                "ssl_options.fail_if_no_peer_cert = "
                + ("true" if self.tls.get("fail_if_no_peer_cert") else "false"),
            ]
        if self.extra_conf:
            conf.append(self.extra_conf.strip())
        (self.base / "rabbitmq.conf").write_text("\n".join(conf) + "\n")
        (self.base / "rabbitmq-env.conf").write_text("")  # not the system's NODENAME
        # advanced.config (Erlang terms) for what rabbitmq.conf cannot say
        (self.base / "advanced.config").write_text(self.advanced.strip() or "[].")
        (self.base / "enabled_plugins").write_text(f"[{','.join(self.plugins)}].\n")

    def env(self) -> dict[str, str]:
        """The environment both the server and rabbitmqctl run with."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(self.home),
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(self.base / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.log_dir),
            RABBITMQ_CONFIG_FILE=str(self.base / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.base / "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=str(self.base / "rabbitmq-env.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.base / "enabled_plugins"),
            RABBITMQ_PID_FILE=str(self.base / "rabbit.pid"),
            ERL_EPMD_ADDRESS="127.0.0.1",
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
        )
        return env

    # -- control -------------------------------------------------------------------------
    def ctl(self, *args: str, timeout: float = 60.0, check: bool = True) -> str:
        """`rabbitmqctl -n <node> <args>`; its stdout. Raises RabbitError on failure."""
        res = subprocess.run(
            [str(RABBIT_BIN / "rabbitmqctl"), "-n", self.nodename, *args],
            env=self.env(),
            capture_output=True,
            timeout=timeout,
            cwd=self.base,
        )
        out = res.stdout.decode(errors="replace")
        if check and res.returncode != 0:
            raise RabbitError(
                f"rabbitmqctl {' '.join(args)} failed ({res.returncode}): "
                f"{out[-1000:]} {res.stderr.decode(errors='replace')[-1500:]}"
            )
        return out

    def start(self, timeout: float = 90.0) -> RabbitNode:
        """Start the node and wait until its AMQP port answers."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        self._write_files()
        self._console = open(self.base / "console.log", "ab")  # noqa: SIM115 - closed in stop
        self.proc = subprocess.Popen(
            [str(RABBIT_BIN / "rabbitmq-server")],
            env=self.env(),
            cwd=self.base,
            stdin=subprocess.DEVNULL,
            stdout=self._console,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self._await(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _await(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RabbitError(
                    f"{self.nodename} exited ({self.proc.returncode}): {self.log_tail()}"
                )
            if port_open(self.port):
                break
            time.sleep(0.2)
        else:
            raise RabbitError(
                f"{self.nodename} did not open port {self.port} in {timeout}s: {self.log_tail()}"
            )
        self.ctl("await_startup", "--timeout", str(max(5, int(end - time.monotonic()))))

    def stop_app(self) -> None:
        """Stop the RabbitMQ application (connections drop, the Erlang node stays up)."""
        self.ctl("stop_app")

    def start_app(self, timeout: float = 60.0) -> None:
        self.ctl("start_app", timeout=timeout)
        end = time.monotonic() + timeout
        while not port_open(self.port):
            if time.monotonic() > end:
                raise RabbitError(f"{self.nodename}: port {self.port} closed after start_app")
            time.sleep(0.1)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the node (gracefully, then by force). Safe to call more than once."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with suppress(Exception):
                self.ctl("stop", timeout=timeout, check=False)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        # the Erlang VM's helpers (erl_child_setup, inet_gethost) share the session
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self._console is not None:
            self._console.close()
            self._console = None

    def kill(self) -> None:
        """SIGKILL the whole node (a crash, not a shutdown)."""
        if self.proc is not None and self.proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def join_cluster(self, other: RabbitNode) -> None:
        """Make this node a member of `other`'s cluster (resets this node's data)."""
        self.ctl("stop_app")
        self.ctl("reset")
        self.ctl("join_cluster", other.nodename)
        self.start_app()

    def log_tail(self, n: int = 3000) -> str:
        parts = []
        for f in [self.base / "console.log", *sorted(self.log_dir.glob("*.log"))]:
            with suppress(OSError):
                parts.append(f"== {f.name}\n{f.read_text(errors='replace')[-n:]}")
        return "\n".join(parts)

    def __enter__(self) -> RabbitNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RabbitNode({self.nodename}, port={self.port})"


def join_cluster(node: RabbitNode, other: RabbitNode) -> None:
    """`node` joins `other`'s cluster."""
    node.join_cluster(other)
