"""arbiter.ray on a real local Ray cluster: three Ray nodes (``ray.cluster_utils.Cluster``,
a head and two workers), each with its own ``arbiter-supervisor`` on its own socket and its
own simulated GPU (8GiB, 16GiB, 24GiB).

The head and the first worker name their supervisor by the node label
``arbiter.dev/supervisor``; the second by ``ARBITER_SUPERVISOR`` in its environment (what
``ray start`` nodes use). Every node declares ``vram_mib``, its supervisor's budget. A task's
body "uses" GPU memory the way a process on a simulated GPU does: it writes its pid's record
in the node's simulated process table (``ARBITER_SIMULATED_GPU_DIR``, set per node, and
``ARBITER_SIMULATED_GPU_INDEX``, set by arbiter.ray from the lease).

What is asserted is what each supervisor recorded (its leases, queue and GPU ledger) and
where Ray ran each task, never how fast. Ray and the supervisors listen on 127.0.0.1 only
(checked); one cluster serves the whole file and is torn down even when a test fails. Every
wait is bounded (``ray.get`` timeouts, ``eventually``).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Set

import pytest
from conftest import GIB, SOON, Supervisor, _report, eventually

# Before Ray is imported: its node address is then the loopback one (Ray reads this once, at
# import), so nothing binds another interface and the driver dials 127.0.0.1. Each node is
# also given 127.0.0.1 as its address, and the test below checks every listening socket.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

import ray  # noqa: E402
import ray._private.ray_constants  # noqa: E402
from ray.cloudpickle import register_pickle_by_value  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # noqa: E402

import arbiter  # noqa: E402
import arbiter.ray  # noqa: E402

# Imported before this file set the variable (by another test file): the same effect.
ray._private.ray_constants.ENABLE_RAY_CLUSTER = False

# The tasks below are this file's functions; Ray's workers cannot import a test file, so
# they travel by value.
register_pickle_by_value(sys.modules[__name__])

LOOPBACK = "127.0.0.1"
MIB = 1 << 20


# What runs in the Ray workers ---------------------------------------------------------


def use(bytes: int) -> Path:
    """What a process on the simulated GPU does when it allocates: its pid's record in the
    table of the node's simulated GPU (0 frees it)."""
    table = Path(os.environ["ARBITER_SIMULATED_GPU_DIR"]) / os.environ["ARBITER_SIMULATED_GPU_INDEX"]
    record = table / str(os.getpid())
    if bytes == 0:
        record.unlink(missing_ok=True)
    else:
        tmp = table / f"{os.getpid()}.tmp"
        tmp.write_text(str(bytes))
        tmp.rename(record)
    return record


def describe_self() -> Dict[str, Any]:
    """The worker, its node and its lease, as the body sees them."""
    lease = arbiter.ray.current_lease()
    return {
        "pid": os.getpid(),
        "node": ray.get_runtime_context().get_node_id(),
        "supervisor": arbiter.ray.node_supervisor(),
        "lease_id": lease.lease_id,
        "bytes": lease.bytes,
        "gpu_uuid": lease.gpu_uuid,
        "gpu_index": lease.gpu_index,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "env_lease_id": os.environ.get("ARBITER_LEASE_ID"),
        "env_lease_bytes": os.environ.get("ARBITER_LEASE_BYTES"),
    }


def held_until_told(meeting: str, tag: str, using: int = 0) -> Dict[str, Any]:
    """A task's body: uses `using` bytes, says who it is in `<meeting>/<tag>.json`, and holds
    on until `<meeting>/<tag>.go` appears; frees its memory before it returns."""
    if using:
        use(using)
    info = describe_self()
    tmp = Path(meeting) / f"{tag}.json.tmp"
    tmp.write_text(json.dumps(info))
    tmp.rename(Path(meeting) / f"{tag}.json")
    deadline = time.monotonic() + 2 * SOON
    while not (Path(meeting) / f"{tag}.go").exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{tag}: never told to go on")
        time.sleep(0.05)
    if using:
        use(0)
    return info


class Holder:
    """An actor's class: uses `using` bytes of its lease for as long as it lives."""

    def __init__(self, using: int) -> None:
        self.record = use(using)

    def info(self) -> Dict[str, Any]:
        return {**describe_self(), "record": str(self.record)}


# The cluster ----------------------------------------------------------------------------


@dataclass
class Node:
    name: str
    supervisor: Supervisor
    ray_node: Any
    #: How the node names its supervisor: "label" or "env".
    by: str

    @property
    def node_id(self) -> str:
        return self.ray_node.node_id

    @property
    def budget(self) -> int:
        return sum(gpu.budget_bytes for gpu in self.status().gpus)

    def status(self) -> Any:
        with self.supervisor.client() as client:
            return client.status()

    def leases(self) -> List[Any]:
        with self.supervisor.client() as client:
            return client.leases()

    def gpu(self) -> Any:
        (gpu,) = self.status().gpus
        return gpu


@dataclass
class Nodes:
    a: Node  # the head, 8GiB, label
    b: Node  # 16GiB, label
    c: Node  # 24GiB, environment
    cluster: Cluster
    ray_dir: Path

    @property
    def all(self) -> List[Node]:
        return [self.a, self.b, self.c]


def descendants(pid: int) -> Set[int]:
    """`pid`'s children, theirs, and so on (from /proc)."""
    children: Dict[int, List[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found: Set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def listening_sockets(pids: Set[int]) -> List[tuple]:
    """(process name, pid, address, port, protocol) of every TCP socket listening, and every
    unconnected UDP socket, that one of `pids` holds (from /proc/net and /proc/PID/fd)."""
    inodes: Dict[str, tuple] = {}
    for table, listening in (("tcp", "0A"), ("tcp6", "0A"), ("udp", "07"), ("udp6", "07")):
        try:
            lines = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != listening:
                continue
            address, port = local.split(":")
            raw = bytes.fromhex(address)
            # /proc/net writes each 32-bit word in host (little-endian) order.
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            inodes[inode] = (ipaddress.ip_address(raw), int(port, 16), table)
    found = []
    for pid in pids:
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                address, port, table = inodes[target[8:-1]]
                found.append((name, pid, address, port, table))
    return found


def loopback(address: Any) -> bool:
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


@pytest.fixture(scope="module")
def nodes() -> Iterator[Nodes]:
    """The three supervisors and the Ray cluster over them, connected; all stopped and their
    directories removed at the end, whatever happened."""
    supervisors: List[Supervisor] = []
    cluster: Optional[Cluster] = None
    ray_dir = Path(tempfile.mkdtemp(prefix="arbiter-ray-"))
    # Ray writes the head's address to <tmp>/ray/ray_current_cluster whatever temp_dir says,
    # and creates that directory only when temp_dir is its default: on a machine where no
    # Ray ran before, the head would fail to start without it.
    Path(tempfile.gettempdir(), "ray").mkdir(exist_ok=True)
    with pytest.MonkeyPatch.context() as env:
        # Ray's processes inherit this environment: nothing of the caller's Arbiter.
        for name in list(os.environ):
            if name.startswith("ARBITER_"):
                env.delenv(name)
        try:
            for gpus in ("8GiB", "16GiB", "24GiB"):
                supervisors.append(Supervisor(gpus=gpus))
            a, b, c = supervisors
            common = {
                "num_cpus": 1,
                "node_ip_address": LOOPBACK,
                "temp_dir": str(ray_dir),
            }
            cluster = Cluster(
                initialize_head=True,
                head_node_args={
                    **common,
                    **arbiter.ray.node_options(a.unix),
                    "include_dashboard": False,
                    "env_vars": {"ARBITER_SIMULATED_GPU_DIR": str(a.simulated_dir)},
                },
            )
            head = cluster.head_node
            second = cluster.add_node(
                **common,
                **arbiter.ray.node_options(b.unix),
                env_vars={"ARBITER_SIMULATED_GPU_DIR": str(b.simulated_dir)},
            )
            third = cluster.add_node(
                **common,
                resources=arbiter.ray.node_resources(c.unix),
                env_vars={"ARBITER_SIMULATED_GPU_DIR": str(c.simulated_dir), "ARBITER_SUPERVISOR": c.unix},
            )
            cluster.wait_for_nodes(timeout=SOON)
            ray.init(address=cluster.address, _node_ip_address=LOOPBACK, log_to_driver=False)
            yield Nodes(
                Node("a", a, head, "label"), Node("b", b, second, "label"), Node("c", c, third, "env"),
                cluster, ray_dir,
            )
        finally:
            ray.shutdown()
            if cluster is not None:
                cluster.shutdown()
            for supervisor in supervisors:
                supervisor.stop()
            for supervisor in supervisors:
                shutil.rmtree(supervisor.dir, ignore_errors=True)
            shutil.rmtree(ray_dir, ignore_errors=True)


@pytest.fixture(autouse=True)
def logs_on_failure(request: pytest.FixtureRequest, nodes: Nodes) -> Iterator[None]:
    """Each test starts on an idle cluster; a failed one prints the supervisors' logs."""
    yield
    _report(request, [node.supervisor.process for node in nodes.all])
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        print(f"Ray's logs: {nodes.ray_dir}/session_latest/logs")


@pytest.fixture
def meeting() -> Iterator[str]:
    """Where tasks say who they are and are told to go on."""
    directory = tempfile.mkdtemp(prefix="arbiter-ray-meet-")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def report_of(meeting: str, tag: str, ref: Any) -> Dict[str, Any]:
    """The running task's report; fails with the task's own error if it ended instead."""
    path = Path(meeting) / f"{tag}.json"

    def probe() -> Optional[Dict[str, Any]]:
        if path.exists():
            return json.loads(path.read_text())
        done, _ = ray.wait([ref], timeout=0)
        if done:
            ray.get(ref, timeout=SOON)  # raises the task's error
            pytest.fail(f"{tag} ended without reporting")
        return None

    return eventually(f"task {tag} to run and report", probe, every=0.1)


def go(meeting: str, tag: str) -> None:
    (Path(meeting) / f"{tag}.go").touch()


def node_of(nodes: Nodes, node_id: str) -> Node:
    return next(node for node in nodes.all if node.node_id == node_id)


def assert_idle(node: Node) -> None:
    """Nothing lent, nothing waiting, nothing on its way back: the whole budget available."""
    def idle() -> bool:
        gpu = node.gpu()
        return (not node.leases() and not node.status().queue and gpu.granted_bytes == 0
                and gpu.returning_bytes == 0 and gpu.available_bytes == gpu.budget_bytes == gpu.total_bytes)

    eventually(f"node {node.name}'s supervisor to have its whole budget back", idle)


def pid_alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return False


# The tests ------------------------------------------------------------------------------


def test_ray_and_the_supervisors_listen_on_loopback_only(nodes: Nodes) -> None:
    ours = descendants(os.getpid())
    sockets = listening_sockets(ours)
    names = {name for name, *_ in sockets}
    assert "gcs_server" in names and "raylet" in names, sockets
    outside = [s for s in sockets if not loopback(s[2])]
    assert not outside, f"listening beyond 127.0.0.1: {outside}"
    # The nodes know themselves by the loopback address too.
    assert {node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"]} == {LOOPBACK}


def test_each_node_declares_its_budget_and_its_supervisor(nodes: Nodes) -> None:
    declared = {node["NodeID"]: node for node in ray.nodes() if node["Alive"]}
    assert set(declared) == {node.node_id for node in nodes.all}
    for node in nodes.all:
        ray_node = declared[node.node_id]
        assert ray_node["Resources"][arbiter.ray.RESOURCE] == node.budget // MIB
        label = ray_node.get("Labels", {}).get(arbiter.ray.SUPERVISOR_LABEL)
        if node.by == "label":
            assert label == f"unix:{node.supervisor.socket}"
        else:
            assert label is None


def test_tasks_take_their_leases_from_the_supervisor_of_the_node_they_run_on(nodes: Nodes, meeting: str) -> None:
    # Ray's hint alone places them, one at a time: 20GiB fits only node c (24GiB); then
    # 12GiB only node b (c has 4GiB of hint left); then 6GiB only node a (8GiB).
    plan = [("large", 20 * GIB, nodes.c), ("medium", 12 * GIB, nodes.b), ("small", 6 * GIB, nodes.a)]
    refs = {}
    try:
        for tag, size, expected in plan:
            task = arbiter.ray.leased(size, max_wait=SOON)(held_until_told)
            refs[tag] = task.remote(meeting, tag, using=size // 2)
            info = report_of(meeting, tag, refs[tag])
            assert info["node"] == expected.node_id, f"{tag} ran on {node_of(nodes, info['node']).name}"
            assert info["supervisor"] == f"unix:{expected.supervisor.socket}"
            # The node's supervisor granted it, to the Ray worker's pid, measured...
            leases = expected.leases()
            assert [lease.lease_id for lease in leases] == [info["lease_id"]], leases
            (lease,) = leases
            assert lease.pid == info["pid"] != os.getpid()
            assert lease.measured
            assert lease.bytes == size == info["bytes"]
            assert lease.holder == f"ray task held_until_told (pid {info['pid']})"
            # ... and counts the worker's use against it.
            gpu = expected.gpu()
            assert lease.gpu_uuid == gpu.uuid == info["gpu_uuid"]
            process = eventually(f"{tag}'s use in its supervisor's ledger",
                                 lambda: next((p for p in expected.gpu().processes if p.pid == info["pid"]), None))
            assert process.used_bytes == size // 2
            assert process.lease_id == info["lease_id"]
            # The body saw its lease's GPU and id.
            assert info["cuda_visible_devices"] == gpu.uuid
            assert info["env_lease_id"] == info["lease_id"]
            assert info["env_lease_bytes"] == str(size)
        # No supervisor granted anything but its own node's task.
        for node in nodes.all:
            assert len(node.leases()) == 1, (node.name, node.leases())
        for tag, _, _ in plan:
            go(meeting, tag)
        results = ray.get([refs[tag] for tag, _, _ in plan], timeout=SOON)
        assert [r["node"] for r in results] == [expected.node_id for _, _, expected in plan]
    finally:
        for tag in refs:
            go(meeting, tag)
    for node in nodes.all:
        assert_idle(node)


def test_a_task_waits_in_the_supervisors_queue_while_its_node_is_full(nodes: Nodes, meeting: str) -> None:
    node = nodes.a
    # A process outside Ray uses 6GiB of node a's 8GiB GPU: Ray's hint does not know of it.
    foreign = subprocess.Popen(["sleep", "300"], stdin=subprocess.DEVNULL)
    record = node.supervisor.simulated_dir / "0" / str(foreign.pid)
    try:
        record.write_text(str(6 * GIB))
        eventually("the foreign use in the ledger",
                   lambda: node.gpu().unleased_bytes == 6 * GIB and node.gpu().available_bytes == 2 * GIB)
        ray_node = next(n for n in ray.nodes() if n["NodeID"] == node.node_id)
        assert ray_node["Resources"][arbiter.ray.RESOURCE] == 8 * GIB // MIB

        task = arbiter.ray.leased("4GiB", max_wait=2 * SOON)(held_until_told).options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False)
        )
        ref = task.remote(meeting, "queued")
        # Ray admitted it (4GiB of an 8GiB hint) and its worker asked: it waits in Arbiter's queue.
        waiter = eventually("the task to wait in node a's queue",
                            lambda: next((w for w in node.status().queue if w.holder.startswith("ray task held_until_told")), None))
        assert waiter.bytes == 4 * GIB
        assert waiter.position == 1
        time.sleep(0.5)
        assert not node.leases()
        assert not (Path(meeting) / "queued.json").exists(), "the body ran before its lease"
        done, _ = ray.wait([ref], timeout=0)
        assert not done
        for other in (nodes.b, nodes.c):
            assert not other.status().queue and not other.leases()

        # The foreign process ends: its memory comes back and the waiting task is granted.
        foreign.kill()
        foreign.wait(SOON)
        info = report_of(meeting, "queued", ref)
        assert info["node"] == node.node_id
        (lease,) = node.leases()
        assert lease.lease_id == info["lease_id"]
        assert lease.pid == info["pid"]
        assert lease.bytes == 4 * GIB
        assert not node.status().queue
        go(meeting, "queued")
        assert ray.get(ref, timeout=SOON)["lease_id"] == info["lease_id"]
    finally:
        go(meeting, "queued")
        if foreign.poll() is None:
            foreign.kill()
            foreign.wait(SOON)
        record.unlink(missing_ok=True)
    assert_idle(node)


def test_a_killed_actors_lease_and_memory_come_back(nodes: Nodes) -> None:
    node = nodes.b
    actor_class = arbiter.ray.leased("10GiB", max_wait=SOON)(Holder)
    actor = actor_class.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False)
    ).remote(8 * GIB)
    try:
        info = ray.get(actor.info.remote(), timeout=SOON)
        assert info["node"] == node.node_id
        (lease,) = node.leases()
        assert lease.lease_id == info["lease_id"]
        assert lease.pid == info["pid"]
        assert lease.holder == f"ray actor Holder (pid {info['pid']})"
        assert lease.bytes == 10 * GIB
        eventually("the actor's use in the ledger",
                   lambda: any(p.pid == info["pid"] and p.used_bytes == 8 * GIB and p.lease_id == info["lease_id"]
                               for p in node.gpu().processes))
        assert node.gpu().available_bytes == 6 * GIB
        # The lease lives as long as the actor: still there after the call.
        assert ray.get(actor.info.remote(), timeout=SOON)["lease_id"] == info["lease_id"]
        assert [lease.lease_id for lease in node.leases()] == [info["lease_id"]]
    finally:
        ray.kill(actor)
    eventually("the actor's worker to end", lambda: not pid_alive(info["pid"]))
    assert_idle(node)
    assert not any(p.pid == info["pid"] for p in node.gpu().processes)
    eventually("the worker's record to be gone from the simulated GPU", lambda: not Path(info["record"]).exists())


def test_a_task_cancelled_by_force_gives_its_lease_and_memory_back(nodes: Nodes, meeting: str) -> None:
    node = nodes.c
    task = arbiter.ray.leased("10GiB", max_wait=SOON)(held_until_told).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False)
    )
    ref = task.remote(meeting, "doomed", using=9 * GIB)
    try:
        info = report_of(meeting, "doomed", ref)
        (lease,) = node.leases()
        assert lease.lease_id == info["lease_id"]
        assert lease.pid == info["pid"]
        eventually("the task's use in the ledger",
                   lambda: any(p.pid == info["pid"] and p.used_bytes == 9 * GIB for p in node.gpu().processes))
        record = node.supervisor.simulated_dir / "0" / str(info["pid"])
        assert record.exists()
        ray.cancel(ref, force=True)
        with pytest.raises((ray.exceptions.TaskCancelledError, ray.exceptions.WorkerCrashedError)):
            ray.get(ref, timeout=SOON)
    finally:
        go(meeting, "doomed")
    eventually("the task's worker to end", lambda: not pid_alive(info["pid"]))
    assert_idle(node)
    assert not any(p.pid == info["pid"] for p in node.gpu().processes)
    eventually("the worker's record to be gone from the simulated GPU", lambda: not record.exists())


def test_leased_takes_the_place_of_ray_remote_and_says_what_it_needs(nodes: Nodes) -> None:
    assert arbiter.ray.mib("1GiB") == 1024
    assert arbiter.ray.mib(1) == 1  # rounded up: the hint never asks for less than the lease
    task = arbiter.ray.leased("1.5GiB")(held_until_told)
    assert task._default_options["resources"] == {arbiter.ray.RESOURCE: 1536}
    assert task._default_options["max_calls"] == 1
    unhinted = arbiter.ray.leased("1GiB", hint=False, num_cpus=0)(held_until_told)
    assert arbiter.ray.RESOURCE not in (unhinted._default_options.get("resources") or {})
    with pytest.raises(TypeError, match="takes the place of @ray.remote"):
        arbiter.ray.leased("1GiB")(ray.remote(held_until_told))
    with pytest.raises(ValueError):
        arbiter.ray.leased("a lot")
    with pytest.raises(arbiter.ArbiterError, match="no Arbiter lease here"):
        arbiter.ray.current_lease()
