"""Start, stop and kill the `broker` binary as a child process.

Used by conftest.py; kept in its own module so it can also be used from a
Python prompt when debugging:

    from brokerproc import BrokerProcess
    b = BrokerProcess.start("/work/target/release/broker", "/tmp/d")
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

DEFAULT_TARGET_DIR = "/var/cache/gsn/target"
READY_TIMEOUT_S = float(os.environ.get("BROKER_READY_TIMEOUT", "60"))
STOP_TIMEOUT_S = 20.0


def broker_bin() -> Path:
    """Path of the broker binary: $BROKER_BIN, else
    ${CARGO_TARGET_DIR:-/var/cache/gsn/target}/release/broker."""
    explicit = os.environ.get("BROKER_BIN")
    if explicit:
        return Path(explicit)
    target = os.environ.get("CARGO_TARGET_DIR") or DEFAULT_TARGET_DIR
    return Path(target) / "release" / "broker"


def ordered_reader_bin() -> Path:
    """Path of the ordered-reader CLI: $ORDERED_READER_BIN, else next to the broker
    binary (both come from `cargo build --release --workspace`)."""
    explicit = os.environ.get("ORDERED_READER_BIN")
    return Path(explicit) if explicit else broker_bin().parent / "ordered-reader"


# Ports handed to child processes come from below the kernel's ephemeral range. A port
# picked by binding to 0 and closing belongs to the ephemeral range, where any outgoing
# connection (a client, another test's broker) may take it before the child binds it: that
# failed a ring test once ("Address already in use"). Below the range only explicit binds
# compete, and this module never hands out the same port twice in a session.
_PORT_SPAN = 12000
_handed_out: set[int] = set()
_next_port: int | None = None


def _port_range() -> tuple[int, int] | None:
    """[lo, hi) below the ephemeral range, or None if the range leaves no room."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            eph_lo, _eph_hi = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        eph_lo = 32768
    lo = max(1024, eph_lo - _PORT_SPAN)
    return (lo, eph_lo) if eph_lo - lo >= 1000 else None


def _bindable(port: int) -> bool:
    """Nobody holds `port` on 127.0.0.1, for TCP or UDP (a child may use it as either)."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        s = socket.socket(socket.AF_INET, kind)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        finally:
            s.close()
    return True


def _ephemeral_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_ports(n: int) -> list[int]:
    """n distinct ports on 127.0.0.1, free for TCP and UDP right now, outside the
    ephemeral range when the machine's range allows, never the same twice."""
    global _next_port
    bounds = _port_range()
    if bounds is None:
        return _ephemeral_ports(n)
    lo, hi = bounds
    if _next_port is None:
        # A start that differs per process keeps two sessions on one machine apart.
        _next_port = lo + (os.getpid() * 7919) % (hi - lo)
    ports: list[int] = []
    for _ in range(hi - lo):
        port = _next_port
        _next_port = lo + (_next_port + 1 - lo) % (hi - lo)
        if port in _handed_out or not _bindable(port):
            continue
        _handed_out.add(port)
        ports.append(port)
        if len(ports) == n:
            return ports
    raise RuntimeError(f"no {n} free ports in {lo}..{hi}")


def free_port() -> int:
    return free_ports(1)[0]


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class BrokerExited(RuntimeError):
    pass


class BrokerProcess:
    """One broker process (and the processes that replace it on restart()).

    The data directory, ports and flags stay the same across restart(), so a
    restarted broker is the same broker as far as clients can tell.
    """

    def __init__(self, binary: Path, data_dir: Path, log_path: Path,
                 port: int, metrics_port: int, extra_args: dict[str, object],
                 env: dict[str, str] | None = None, wrapper: list[str] | None = None):
        self.binary = Path(binary)
        self.data_dir = Path(data_dir)
        self.log_path = Path(log_path)
        self.port = port
        self.metrics_port = metrics_port
        self.extra_args = dict(extra_args)
        self.env = dict(env or {})
        # A command the broker's argv is appended to (e.g. `unshare` with a mount), kept
        # across restarts.
        self.wrapper = list(wrapper or [])
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        # True once the test itself stopped the broker (kill9/terminate), so a
        # dead process at teardown is not reported as a crash.
        self.expected_exit = False

    # ---- construction -------------------------------------------------
    @classmethod
    def start(cls, binary: Path, data_dir: Path, log_path: Path | None = None,
              env: dict[str, str] | None = None, ports: tuple[int, int] | None = None,
              wrapper: list[str] | None = None, **extra_args) -> "BrokerProcess":
        """extra_args become `--flag value` (underscores -> dashes, bools ->
        true/false); env is added to the broker's environment. `ports` (Kafka,
        metrics) lets a caller that allocates several brokers' ports at once
        keep them distinct; by default two free ports are picked. `wrapper` is a command
        the broker's argv is appended to; the wrapper must exec the broker (same pid)."""
        data_dir = Path(data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        if log_path is None:
            log_path = data_dir.parent / (data_dir.name + ".stderr.log")
        port, metrics_port = ports if ports is not None else free_ports(2)
        b = cls(binary, data_dir, Path(log_path), port, metrics_port, extra_args, env,
                wrapper)
        b._spawn()
        return b

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        args = self.wrapper + [str(self.binary)]
        if "node_id" not in self.extra_args:
            args += ["--node-id", "1"]
        args += [
            "--listen", f"127.0.0.1:{self.port}",
            "--advertised-host", "127.0.0.1",
            "--data-dir", str(self.data_dir),
            "--metrics-listen", f"127.0.0.1:{self.metrics_port}",
        ]
        for key, value in self.extra_args.items():
            if isinstance(value, bool):
                value = "true" if value else "false"
            args += ["--" + key.replace("_", "-"), str(value)]
        return args

    def _spawn(self) -> None:
        if not self.binary.exists():
            raise FileNotFoundError(
                f"broker binary not found at {self.binary}. Build it with "
                f"`cargo build --release -p broker` or point BROKER_BIN at it.")
        self.starts += 1
        self.expected_exit = False
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start #{self.starts}: {' '.join(self.argv())}\n".encode())
            log.flush()
            env = dict(os.environ)
            env.setdefault("RUST_BACKTRACE", "1")
            env.update(self.env)
            self.proc = subprocess.Popen(
                self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                env=env, start_new_session=True)
        self.wait_ready()

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Poll until the Kafka port accepts connections (bounded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerExited(
                    f"broker exited with code {self.proc.returncode} before it "
                    f"accepted connections; stderr tail:\n{self.log_tail()}")
            if port_open(self.port):
                return
            time.sleep(0.05)
        self.kill9()
        raise TimeoutError(
            f"broker did not accept connections on {self.bootstrap} within "
            f"{timeout}s; stderr tail:\n{self.log_tail()}")

    # ---- state --------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def log_tail(self, lines: int = 80) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError as e:
            return f"<cannot read {self.log_path}: {e}>"
        text = data.decode("utf-8", "replace").splitlines()
        return "\n".join(text[-lines:])

    def first_log_line_with(self, needle: str) -> str | None:
        try:
            with open(self.log_path, "rb") as f:
                for line in f:
                    text = line.decode("utf-8", "replace")
                    if needle in text:
                        return text
        except OSError:
            pass
        return None

    # ---- stopping -----------------------------------------------------
    def kill9(self) -> None:
        """SIGKILL the broker and reap it."""
        self.expected_exit = True
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.kill(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=STOP_TIMEOUT_S)

    def terminate(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM the broker and wait for it to exit; returns the exit code.
        Raises TimeoutError (after SIGKILLing it) if it does not exit in time."""
        if self.proc is None:
            raise RuntimeError("broker was never started")
        self.expected_exit = True
        if self.proc.poll() is not None:
            return self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            raise TimeoutError(f"broker did not exit within {timeout}s of SIGTERM")

    def restart(self) -> None:
        """Start the broker again on the same ports, flags and data dir. If it
        is still running it is SIGKILLed first."""
        self.kill9()
        # The old process is gone; its listening socket is closed with it.
        self._spawn()

    def cleanup(self) -> None:
        """Always-kill used by fixtures at teardown."""
        try:
            self.kill9()
        except Exception:
            pass
