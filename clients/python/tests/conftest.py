"""Fixtures that run the REAL binaries: ``arbiter-supervisor`` on simulated GPUs (and the
``arbiter-video`` workers it spawns from beside itself), and ``arbiter-tts serve``.

Like the Rust tests' kit (test-kit/src/supervisor.rs), each supervisor gets its own
temporary directory with its own config file, socket, simulated process table, state
directory and TCP port on 127.0.0.1; no ``ARBITER_*`` variable of the caller's shell leaks
into it. Every wait is bounded, every process is stopped at teardown (SIGTERM, then SIGKILL),
and its log is printed when the test failed (``ARBITER_TEST_LOGS=1`` prints every one).

The binaries are found in ``$ARBITER_BIN_DIR``, else ``$CARGO_TARGET_DIR/debug``, else the
workspace's ``target/debug`` (``cargo build --workspace --bins``, as scripts/test.sh does).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, List, Optional, TypeVar

import pytest

import arbiter

ROOT = Path(__file__).resolve().parents[3]
GIB = 1 << 30

#: How long a process may take to start answering, and anything that should happen "soon"
#: (a grant after a release, a revocation reaching the holder), on a loaded 2-core machine.
SOON = 30.0
#: How long a video job may take end to end.
JOB_TIMEOUT = 180.0
#: How long a stopped process gets between SIGTERM and SIGKILL.
STOP_GRACE = 5.0

T = TypeVar("T")


def bin_dir() -> Path:
    if os.environ.get("ARBITER_BIN_DIR"):
        return Path(os.environ["ARBITER_BIN_DIR"])
    target = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target")
    return target / "debug"


def binary(name: str) -> Path:
    path = bin_dir() / name
    if not path.is_file():
        pytest.fail(f"{path} is missing: build it first (cargo build --workspace --bins)")
    return path


def eventually(what: str, probe: Callable[[], Optional[T]], timeout: float = SOON, every: float = 0.05) -> T:
    """Polls `probe` until it returns something other than None/False, for at most
    `timeout` seconds; fails the test saying what it waited for."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def clean_env() -> dict:
    """The environment for a child: nothing ARBITER_* from the caller, no systemd sockets."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("ARBITER_") and k not in ("JOURNAL_STREAM", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
    }
    env["RUST_LOG"] = "info,arbiter_supervisor=debug"
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """A child process logging to a file, stopped by :meth:`stop`."""

    def __init__(self, name: str, command: List[str], log: Path, env: dict) -> None:
        self.name = name
        self.log = log
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def exited(self) -> Optional[int]:
        return self.popen.poll()

    def terminate(self) -> None:
        """SIGTERM, as systemd stops a service."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = SOON) -> int:
        return self.popen.wait(timeout)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers past the grace; always reaped."""
        self.terminate()
        try:
            self.popen.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(STOP_GRACE)

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


class Supervisor:
    """``arbiter-supervisor`` on simulated GPUs in its own temporary directory."""

    def __init__(
        self,
        gpus: str = "10GiB,4GiB",
        config: str = "",
        args: Optional[List[str]] = None,
        socket_path: Optional[Path] = None,
    ) -> None:
        # Short, under /tmp: a Unix socket's path must fit in 108 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix="arbiter-py-"))
        self.socket = socket_path or self.dir / "supervisor.sock"
        self.simulated_dir = self.dir / "simulated"
        self.state_dir = self.dir / "state"
        self.config = self.dir / "supervisor.toml"
        self.config.write_text(config)
        self.log = self.dir / "supervisor.log"
        self.gpus = gpus
        self.args = args or []
        self.port = 0
        try:
            self.process = self._launch()
        except BaseException:
            # Failed to start (the failure says why, with the log): nothing left behind.
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    def _command(self, port: int) -> List[str]:
        return [
            str(binary("arbiter-supervisor")),
            "--config", str(self.config),
            "--socket", str(self.socket),
            "--simulated-dir", str(self.simulated_dir),
            "--state-dir", str(self.state_dir),
            "--reserve", "0B",
            "--sample-interval", "100ms",
            "--simulated-gpus", self.gpus,
            # Plaintext over loopback: the client speaks plaintext TCP (TLS is the
            # supervisor's default for TCP; these tests opt out, as the Rust tests do).
            "--listen", f"127.0.0.1:{port}", "--insecure-tcp",
            *self.args,
        ]  # fmt: skip

    def _launch(self) -> Process:
        # The free port can be taken before the supervisor binds it; then it exits at once
        # saying so, and another port is tried.
        for attempt in range(3):
            self.port = free_port()
            process = Process("arbiter-supervisor", self._command(self.port), self.log, clean_env())
            why = self._wait_ready(process)
            if why is None:
                return process
            process.stop()
            if "cannot listen on TCP" in process.output() and attempt < 2:
                continue
            pytest.fail(f"{why}; log:\n{process.output()}")
        raise AssertionError("unreachable")

    def _wait_ready(self, process: Process) -> Optional[str]:
        """None once the supervisor answers a Ping on its socket and on TCP; else why not."""
        deadline = time.monotonic() + SOON
        while time.monotonic() < deadline:
            code = process.exited()
            if code is not None:
                return f"arbiter-supervisor exited ({code}) before serving"
            if self.socket.exists():
                try:
                    for address in (self.unix, self.tcp):
                        with arbiter.connect(address, timeout=2) as client:
                            client.ping()
                    return None
                except arbiter.ArbiterError:
                    pass
            time.sleep(0.05)
        return f"arbiter-supervisor did not answer on {self.socket} within {SOON:.0f} s"

    @property
    def unix(self) -> str:
        return str(self.socket)

    @property
    def tcp(self) -> str:
        return f"127.0.0.1:{self.port}"

    def address(self, transport: str) -> str:
        return self.unix if transport == "unix" else self.tcp

    def client(self) -> arbiter.Client:
        """A client over the Unix socket, for a test's own observations."""
        return arbiter.connect(self.unix)

    def terminate(self) -> None:
        self.process.terminate()

    def stop(self) -> None:
        self.process.stop()


def _report(request: pytest.FixtureRequest, processes: List[Process]) -> None:
    reports = [getattr(request.node, f"rep_{phase}", None) for phase in ("setup", "call")]
    failed = any(report is not None and report.failed for report in reports)
    if failed or os.environ.get("ARBITER_TEST_LOGS"):
        for process in processes:
            print(f"----- {process.name} (pid {process.pid}) log {process.log} -----")
            print(process.output())


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):  # type: ignore[no-untyped-def]
    # Keeps each phase's report on the test, so fixtures know at teardown whether it failed.
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture
def start_supervisor(request: pytest.FixtureRequest) -> Iterator[Callable[..., Supervisor]]:
    """Starts supervisors (``start_supervisor(gpus=..., config=..., args=[...])``); each is
    stopped, its log printed if the test failed, and its directory removed at teardown."""
    started: List[Supervisor] = []

    def start(**kwargs) -> Supervisor:  # type: ignore[no-untyped-def]
        supervisor = Supervisor(**kwargs)
        started.append(supervisor)
        return supervisor

    yield start
    for supervisor in started:
        supervisor.stop()
    _report(request, [s.process for s in started])
    for supervisor in started:
        shutil.rmtree(supervisor.dir, ignore_errors=True)


@pytest.fixture
def supervisor(start_supervisor: Callable[..., Supervisor]) -> Supervisor:
    """A supervisor on simulated GPUs of 10GiB and 4GiB, no reserve."""
    return start_supervisor()


@pytest.fixture(params=["unix", "tcp"])
def transport(request: pytest.FixtureRequest) -> str:
    """Each test that takes it runs over the supervisor's Unix socket and over TCP."""
    return request.param


@pytest.fixture
def start_tts(request: pytest.FixtureRequest) -> Iterator[Callable[..., Path]]:
    """Starts ``arbiter-tts serve`` on a socket in a temporary directory (eSpeak NG voices,
    no GPU, no lease) and returns the socket once the service answers; stopped at teardown."""
    started: List[Process] = []
    dirs: List[Path] = []

    def start(*extra: str, socket_path: Optional[Path] = None) -> Path:
        directory = Path(tempfile.mkdtemp(prefix="arbiter-py-tts-"))
        dirs.append(directory)
        path = socket_path or directory / "tts.sock"
        command = [str(binary("arbiter-tts")), "serve", "--socket", str(path), *extra]
        process = Process("arbiter-tts", command, directory / "tts.log", clean_env())
        started.append(process)  # stopped, reported and removed at teardown, whatever happens

        def answering() -> bool:
            if process.exited() is not None:
                pytest.fail(f"arbiter-tts exited ({process.exited()}) before serving:\n{process.output()}")
            if not path.exists():
                return False
            try:
                return bool(arbiter.voices(address=path))
            except arbiter.ArbiterError:
                return False

        eventually(f"arbiter-tts to answer on {path}", answering)
        return path

    yield start
    for process in started:
        process.stop()
    _report(request, started)
    for directory in dirs:
        shutil.rmtree(directory, ignore_errors=True)
