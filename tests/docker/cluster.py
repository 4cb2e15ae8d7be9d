"""The compose deployment as the fault tests see it: start/stop the project, inject faults
into its containers (kill, pause, network disconnect), read the ring controllers' admin HTTP.

Everything goes through the docker / compose CLIs with timeouts; every wait is a condition
poll with a deadline (`wait_for`). Only loopback and the project's own containers are
contacted.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Host ports, as published by docker-compose.yml.
KAFKA_PORTS = {1: 9092, 2: 9093, 3: 9094}
# Ring controllers' admin HTTP port inside their containers (not published on the host:
# reached at the container's address on the compose network).
CONTROLLER_IDS = (1, 2, 3)
CONTROLLER_ADMIN_PORT = 9700
CLI_TIMEOUT_S = 120


class Timeout(AssertionError):
    pass


def wait_for(cond, what: str, timeout: float, interval: float = 0.25):
    """Polls cond() until it returns something other than None/False; returns it. Raises
    Timeout naming `what` (and the last exception cond raised, if any) at the deadline."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            got = cond()
            if got is not None and got is not False:
                return got
        except Exception as e:  # noqa: BLE001 - reported at the deadline
            last_exc = e
        if time.monotonic() >= deadline:
            extra = f" (last error: {last_exc!r})" if last_exc else ""
            raise Timeout(f"timed out after {timeout:.0f}s waiting for {what}{extra}")
        time.sleep(interval)


def compose_command() -> list[str]:
    """`docker compose` (v2 plugin) if it answers, else `docker-compose` (v1)."""
    try:
        if subprocess.run(["docker", "compose", "version"], capture_output=True,
                          timeout=30).returncode == 0:
            return ["docker", "compose"]
    except (OSError, subprocess.TimeoutExpired):
        pass
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise RuntimeError("neither `docker compose` nor `docker-compose` is installed")


def docker_reachable() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True,
                              timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def http_get(host: str, port: int, path: str, timeout: float = 2.0) -> tuple[int, str]:
    """GET http://host:port/path -> (status, body); HTTP errors are answers too."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def http_post(host: str, port: int, path: str, timeout: float = 5.0) -> tuple[int, str]:
    req = urllib.request.Request(f"http://{host}:{port}{path}", method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def metric(text: str, name: str) -> float | None:
    """The value of an unlabelled Prometheus sample `name` in a /metrics body."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == name:
            return float(parts[1])
    return None


class Cluster:
    """One compose project. `files` are the compose files (default: the repository's)."""

    def __init__(self, project: str, files: list[Path] | None = None,
                 log_dir: Path | None = None):
        self.project = project
        self.files = files or [ROOT / "docker-compose.yml"]
        self.compose_cmd = compose_command()
        self.log_dir = log_dir
        self._ids: dict[str, str] = {}
        self._ips: dict[str, str] = {}
        # Network attachments saved by disconnect(), restored by connect().
        self._detached: dict[str, dict] = {}

    # ---- CLI ---------------------------------------------------------------------
    def compose(self, *args: str, timeout: float = CLI_TIMEOUT_S,
                check: bool = True) -> subprocess.CompletedProcess:
        cmd = [*self.compose_cmd, "-p", self.project]
        for f in self.files:
            cmd += ["-f", str(f)]
        return run([*cmd, *args], timeout=timeout, check=check, cwd=ROOT)

    def docker(self, *args: str, timeout: float = CLI_TIMEOUT_S,
               check: bool = True) -> subprocess.CompletedProcess:
        return run(["docker", *args], timeout=timeout, check=check)

    # ---- lifecycle ---------------------------------------------------------------
    def services(self) -> list[str]:
        out = self.compose("config", "--services").stdout
        return sorted(s for s in out.split() if s)

    def running_services(self) -> list[str]:
        """Services the project has a container for (profiles may leave some out)."""
        return [s for s in self.services() if self.container(s, required=False)]

    def up(self, timeout: float = 180) -> float:
        """`up -d`, then waits until every container is healthy; returns the seconds taken."""
        t0 = time.monotonic()
        self.compose("up", "-d", timeout=timeout)
        self._ids.clear()
        self._ips.clear()
        self.wait_healthy(self.running_services(), timeout=timeout)
        return time.monotonic() - t0

    def down(self) -> None:
        """Stops the project and deletes its volumes and network."""
        for service in list(self._detached):
            try:
                self.connect(service)
            except Exception:  # noqa: BLE001 - going away anyway
                pass
        for service in self.services():
            cid = self.container(service, required=False)
            if cid and self.state(service)[0] == "paused":
                self.docker("unpause", cid, check=False)
        self.compose("down", "-v", "--remove-orphans", "-t", "10", timeout=300, check=False)

    def container(self, service: str, required: bool = True) -> str | None:
        cid = self._ids.get(service)
        if cid:
            return cid
        out = self.compose("ps", "-a", "-q", service, check=False).stdout.strip()
        if not out:
            if required:
                raise RuntimeError(f"no container for service {service}")
            return None
        self._ids[service] = out.splitlines()[0]
        return self._ids[service]

    def inspect(self, service: str) -> dict:
        out = self.docker("inspect", self.container(service)).stdout
        return json.loads(out)[0]

    def state(self, service: str) -> tuple[str, str]:
        """(status, health): e.g. ("running", "healthy"), ("paused", "unhealthy"),
        ("exited", "unhealthy"); health is "none" without a health check."""
        st = self.inspect(service)["State"]
        health = (st.get("Health") or {}).get("Status", "none")
        return st["Status"], health

    def healthy(self, service: str) -> bool:
        return self.state(service) == ("running", "healthy")

    def wait_healthy(self, services: list[str], timeout: float = 180) -> None:
        def all_healthy():
            bad = {}
            for s in services:
                status, health = self.state(s)
                if status in ("exited", "dead"):
                    raise RuntimeError(f"{s} {status}:\n{self.logs(s, 30)}")
                if (status, health) != ("running", "healthy"):
                    bad[s] = f"{status}/{health}"
            self._last_unhealthy = bad
            return not bad

        self._last_unhealthy = {}
        try:
            wait_for(all_healthy, f"healthy: {', '.join(services)}", timeout, interval=1.0)
        except Timeout as e:
            raise Timeout(f"{e}; still not healthy: {self._last_unhealthy}") from None

    def logs(self, service: str, tail: int = 60) -> str:
        cid = self.container(service, required=False)
        if not cid:
            return f"<no container for {service}>"
        r = self.docker("logs", "--tail", str(tail), cid, check=False)
        return (r.stdout + r.stderr).strip()

    def save_logs(self, tag: str) -> Path | None:
        """Writes every container's full log to log_dir/<tag>/<service>.log."""
        if self.log_dir is None:
            return None
        d = self.log_dir / tag
        d.mkdir(parents=True, exist_ok=True)
        for s in self.services():
            cid = self.container(s, required=False)
            if cid:
                r = self.docker("logs", "-t", cid, check=False)
                (d / f"{s}.log").write_text(r.stdout + r.stderr)
        return d

    # ---- faults ------------------------------------------------------------------
    def kill(self, service: str) -> None:
        self.docker("kill", "-s", "KILL", self.container(service))

    def start(self, service: str) -> None:
        """Starts a stopped container (no-op if Docker's restart policy already did)."""
        if self.state(service)[0] != "running":
            self.docker("start", self.container(service))

    def pause(self, service: str) -> None:
        self.docker("pause", self.container(service))

    def unpause(self, service: str) -> None:
        self.docker("unpause", self.container(service))

    def networks_of(self, service: str) -> dict:
        return self.inspect(service)["NetworkSettings"]["Networks"]

    def disconnect(self, service: str) -> list[str]:
        """Cuts the container off every network it is on (its process keeps running);
        returns the network names. connect() restores address and aliases."""
        nets = self.networks_of(service)
        self._detached[service] = {
            name: {"ip": (n.get("IPAMConfig") or {}).get("IPv4Address") or n.get("IPAddress"),
                   "aliases": [a for a in (n.get("Aliases") or [])
                               if not self.container(service).startswith(a)]}
            for name, n in nets.items()}
        for name in nets:
            self.docker("network", "disconnect", name, self.container(service))
        return list(nets)

    def connect(self, service: str) -> None:
        for name, att in self._detached.pop(service, {}).items():
            args = ["network", "connect"]
            if att["ip"]:
                args += ["--ip", att["ip"]]
            for alias in att["aliases"]:
                args += ["--alias", alias]
            self.docker(*args, name, self.container(service))

    # ---- ring --------------------------------------------------------------------
    def ip(self, service: str) -> str:
        """The container's address on its (first) network, remembered: the compose file
        fixes it, and it must stay known while the container is stopped."""
        if service not in self._ips:
            nets = self.networks_of(service)
            ip = next((n.get("IPAddress") or (n.get("IPAMConfig") or {}).get("IPv4Address")
                       for n in nets.values()), None)
            if not ip:
                raise RuntimeError(f"{service} has no IP address")
            self._ips[service] = ip
        return self._ips[service]

    def controller_admin(self, c: int) -> tuple[str, int]:
        return self.ip(f"ring-ctrl-{c}"), CONTROLLER_ADMIN_PORT

    def ring_config(self) -> dict:
        """The installed ring configuration, from the first controller that answers."""
        for c in CONTROLLER_IDS:
            try:
                status, body = http_get(*self.controller_admin(c), "/ring", timeout=1.0)
            except OSError:
                continue
            if status == 200:
                return json.loads(body)
        return {}

    def controller_leader(self) -> int | None:
        """Id of the controller whose /metrics says ring_controller_is_leader 1."""
        for c in CONTROLLER_IDS:
            try:
                status, body = http_get(*self.controller_admin(c), "/metrics", timeout=1.0)
            except OSError:
                continue
            if status == 200 and metric(body, "ring_controller_is_leader") == 1:
                return c
        return None

    def resize_ring(self, switch_ids: list[int], timeout: float = 60) -> None:
        """POST /resize to whichever controller leads (others answer 421)."""
        query = ",".join(map(str, switch_ids))

        def attempt():
            leader = self.controller_leader()
            if leader is None:
                return False
            status, _ = http_post(*self.controller_admin(leader), f"/resize?switches={query}")
            return status == 200

        wait_for(attempt, f"a controller leader to accept resize to {query}", timeout, 0.5)

    # ---- brokers -----------------------------------------------------------------
    def broker_ids(self) -> list[int]:
        return sorted(int(s.split("-")[1]) for s in self.running_services()
                      if s.startswith("broker-"))

    def bootstrap(self) -> str:
        return ",".join(f"localhost:{KAFKA_PORTS[b]}" for b in self.broker_ids())


def run(cmd: list[str], timeout: float, check: bool = True,
        cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    # Compose v1 prints ANSI progress otherwise.
    env.setdefault("COMPOSE_INTERACTIVE_NO_CLI", "1")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)
    if check and r.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r
