"""A local multi-broker KRaft cluster on loopback, from the same cached jars as the single broker.

Every node is a combined broker + controller (``process.roles=broker,controller``) in its own
JVM, data directory and pair of loopback ports; the controllers form one quorum, so the
cluster survives one node down (2 of 3 voters). Replication is what a production cluster
runs: replication factor 3 for new topics, the offsets and the transaction state topics,
``min.insync.replicas=2`` -- an ``acks=all`` write needs two live replicas.

A node can be stopped, SIGKILLed, frozen (SIGSTOP) and thawed (SIGCONT), and started again
on the same directory and ports; ``cluster.json`` under the home keeps the ports and the
cluster id, so a later ``start`` on the same home reuses the data.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from confluent_kafka.admin import AdminClient

from schemas.errors import ServiceError
from streamscore.dev.kafka import (broker_answers, format_storage, launch_broker, new_cluster_id, null_logger,
                                  server_properties)
from streamscore.dev.util import free_port, wait_until

REPLICATION: dict[str, str] = {
    "default.replication.factor": "3",
    "min.insync.replicas": "2",
    "offsets.topic.replication.factor": "3",
    "transaction.state.log.replication.factor": "3",
    "transaction.state.log.min.isr": "2",
    "share.coordinator.state.topic.replication.factor": "3",
    "share.coordinator.state.topic.min.isr": "2",
}

FAILOVER: dict[str, str] = {
    # A SIGKILLed node is fenced by the controller (its leaderships move) after 6 s without
    # a heartbeat, instead of 9 s.
    "broker.session.timeout.ms": "6000",
    "broker.heartbeat.interval.ms": "1000",
    # A frozen follower leaves the ISR after 10 s (default 30 s), so acks=all writes to its
    # partitions resume with the two replicas left.
    "replica.lag.time.max.ms": "10000",
    # Leadership returns to the preferred replica soon after a node comes back, so load
    # spreads again before the next fault.
    "leader.imbalance.check.interval.seconds": "15",
    # Three JVMs share two cores with the scorers: few threads each.
    "num.network.threads": "2",
    "num.io.threads": "2",
    "num.replica.fetchers": "1",
    "background.threads": "2",
}


# The C1 compiler only: a node (re)starts in about half the CPU time, which is what a
# restart on a busy two-core machine waits for; the loads here never need C2's code.
JVM_FLAGS = ("-XX:TieredStopAtLevel=1",)


@dataclass
class ClusterNode:
    """One broker + controller process of a :class:`KafkaCluster`."""

    node_id: int
    home: Path
    port: int
    controller_port: int
    heap: str
    process: "subprocess.Popen[bytes] | None" = None
    frozen: bool = False

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.home / "kafka.log"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def launch(self) -> None:
        """Start the JVM (no wait); a node already running is left alone."""
        if self.alive():
            return
        self.process, _ = launch_broker(self.home, self.home / "server.properties", heap=self.heap,
                                        initial_heap="128m", jvm_flags=JVM_FLAGS)
        self.frozen = False

    def kill(self) -> None:
        """SIGKILL: no controlled shutdown, leaderships move only when the controller fences it."""
        if self.alive():
            assert self.process is not None
            self.process.kill()
            self.process.wait(30)
        self.frozen = False

    def freeze(self) -> None:
        """SIGSTOP: the process keeps its sockets open but answers nothing (a network stall)."""
        if self.alive():
            assert self.process is not None
            os.kill(self.process.pid, signal.SIGSTOP)
            self.frozen = True

    def thaw(self) -> None:
        if self.alive() and self.frozen:
            assert self.process is not None
            os.kill(self.process.pid, signal.SIGCONT)
        self.frozen = False

    def terminate(self) -> None:
        """SIGTERM (a controlled shutdown); a frozen node is thawed first so it can act on it."""
        self.thaw()
        if self.alive():
            assert self.process is not None
            self.process.terminate()


@dataclass
class KafkaCluster:
    """``brokers`` combined KRaft nodes under ``home`` (``home/node-<id>``); the caller must ``stop()`` it."""

    home: Path
    nodes: list[ClusterNode] = field(default_factory=list)
    cluster_id: str = ""

    @property
    def bootstrap(self) -> str:
        return ",".join(n.bootstrap for n in self.nodes)

    def node(self, node_id: int) -> ClusterNode:
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        raise KeyError(f"no node {node_id} in this cluster (nodes: {[n.node_id for n in self.nodes]})")

    # ------------------------------------------------------------------ whole cluster
    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM every node at once (one by one, the last ones lose their quorum and hang), then SIGKILL."""
        for n in self.nodes:
            n.terminate()
        deadline = time.monotonic() + timeout
        for n in self.nodes:
            if n.process is None:
                continue
            try:
                n.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                n.kill()

    def kill(self) -> None:
        for n in self.nodes:
            n.kill()

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Until every node is a registered, unfenced broker in the cluster's metadata."""
        want = {n.node_id for n in self.nodes}
        wait_until(lambda: want <= self.live_brokers() and all(broker_answers(n.bootstrap) for n in self.nodes),
                   timeout=timeout,
                   what=f"{len(want)}-broker Kafka cluster on {self.bootstrap}",
                   alive=lambda: all(n.alive() for n in self.nodes), log=self.nodes[0].log if self.nodes else None)

    # ------------------------------------------------------------------ one node
    def start_node(self, node_id: int, *, timeout: float = 120.0) -> None:
        """Start a stopped or killed node again (same data, same ports); wait until it is back in the cluster."""
        n = self.node(node_id)
        n.launch()
        # its own listener answering, not only its id in the metadata (a dead node is listed until it is fenced)
        wait_until(lambda: broker_answers(n.bootstrap) and node_id in self.live_brokers(), timeout=timeout,
                   what=f"Kafka node {node_id}", alive=n.alive, log=n.log)

    def stop_node(self, node_id: int, timeout: float = 30.0) -> None:
        n = self.node(node_id)
        n.terminate()
        if n.process is not None:
            try:
                n.process.wait(timeout)
            except subprocess.TimeoutExpired:
                n.kill()

    # ------------------------------------------------------------------ metadata
    def _admin(self) -> AdminClient:
        live = [n.bootstrap for n in self.nodes if n.alive() and not n.frozen] or [self.bootstrap]
        return AdminClient({"bootstrap.servers": ",".join(live), "log_level": 0, "logger": null_logger()})

    def live_brokers(self, timeout: float = 3.0) -> set[int]:
        """Ids of the brokers the cluster metadata lists now (a fenced or dead broker drops out)."""
        try:
            md = self._admin().list_topics(timeout=timeout)
        except Exception:
            return set()
        return {int(b) for b in md.brokers}

    def leader_of(self, topic: str, partition: int, timeout: float = 10.0) -> int:
        """The node id leading ``topic``/``partition`` now (-1 while it has none)."""
        md = self._admin().list_topics(topic, timeout=timeout)
        return int(md.topics[topic].partitions[partition].leader)

    def under_replicated(self, topics: Iterable[str] | None = None, timeout: float = 10.0) -> list[str]:
        """``topic/partition`` of every partition (of ``topics``, default all) whose ISR is not all its replicas."""
        md = self._admin().list_topics(timeout=timeout)
        wanted = set(topics) if topics is not None else None
        out = []
        for name, t in md.topics.items():
            if wanted is not None and name not in wanted:
                continue
            for p in t.partitions.values():
                if sorted(p.isrs) != sorted(p.replicas) or p.leader < 0:
                    out.append(f"{name}/{p.id}")
        return sorted(out)

    def wait_in_sync(self, topics: Iterable[str] | None = None, timeout: float = 120.0) -> None:
        """Until every partition has its full ISR (so the next fault leaves two in-sync replicas)."""
        names = list(topics) if topics is not None else None

        def ok() -> bool:
            try:
                return not self.under_replicated(names)
            except Exception:
                return False
        wait_until(ok, timeout=timeout, what="every partition back in sync")


def start_cluster(home: Path, *, brokers: int = 3, heap: str = "384m", extra: dict[str, str] | None = None,
                  timeout: float = 180.0, warm_up: bool = True) -> KafkaCluster:
    """Start (formatting on first use) a ``brokers``-node KRaft cluster under ``home``; wait until it serves.

    With ``warm_up`` the offsets and transaction state topics are created before returning,
    while every node is up: created later with a node down, they could not get 3 replicas.
    """
    if brokers < 3:
        raise ServiceError(f"a cluster needs at least 3 brokers for replication factor 3, not {brokers}")
    home.mkdir(parents=True, exist_ok=True)
    state_file = home / "cluster.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    if state.get("brokers") != brokers:
        state = {"brokers": brokers, "cluster_id": new_cluster_id(),
                 "ports": [[free_port(), free_port()] for _ in range(brokers)]}
        state_file.write_text(json.dumps(state))
    ports = state["ports"]
    voters = ",".join(f"{i + 1}@127.0.0.1:{c}" for i, (_p, c) in enumerate(ports))
    cluster = KafkaCluster(home=home, cluster_id=state["cluster_id"])
    for i, (port, controller_port) in enumerate(ports):
        node_home = home / f"node-{i + 1}"
        node_home.mkdir(exist_ok=True)
        data = node_home / "data"
        props = {**REPLICATION, **FAILOVER, "node.id": str(i + 1), "controller.quorum.voters": voters,
                 **(extra or {})}
        (node_home / "server.properties").write_text(server_properties(data, port, controller_port, props))
        cluster.nodes.append(ClusterNode(node_id=i + 1, home=node_home, port=port, controller_port=controller_port,
                                         heap=heap))
    try:
        _format_all(cluster)
        for n in cluster.nodes:
            n.launch()
        cluster.wait_ready(timeout)
        if warm_up:
            _create_internal_topics(cluster.bootstrap, timeout)
    except BaseException:
        cluster.kill()
        raise
    return cluster


def _format_all(cluster: KafkaCluster) -> None:
    """Format the nodes not formatted yet, in parallel (each is a JVM start)."""
    from concurrent.futures import ThreadPoolExecutor

    todo = [n for n in cluster.nodes if not (n.home / "data" / "meta.properties").exists()]
    with ThreadPoolExecutor(max_workers=max(1, len(todo))) as pool:
        for fut in [pool.submit(format_storage, n.home / "server.properties", cluster.cluster_id) for n in todo]:
            fut.result()


def _create_internal_topics(bootstrap: str, timeout: float) -> None:
    """One transactional init and one offset commit: the broker creates __transaction_state and __consumer_offsets."""
    import uuid

    from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

    from consumers.kafka_client import ensure_topics

    topic = "streamscore-cluster-warmup"
    ensure_topics({"bootstrap.servers": bootstrap}, {topic: 1}, timeout=timeout)
    p = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"warmup-{uuid.uuid4().hex}", "log_level": 0})
    p.init_transactions(timeout)
    p.begin_transaction()
    p.produce(topic, b"warm-up")
    p.commit_transaction(timeout)
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "streamscore-cluster-warmup",
                  "enable.auto.commit": False, "log_level": 0})
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                c.commit(offsets=[TopicPartition(topic, 0, 1)], asynchronous=False)
                return
            except KafkaException as exc:   # e.g. the new offsets topic's coordinator is still loading
                if time.monotonic() > deadline:
                    raise ServiceError(f"the cluster's offsets topic did not come up: {exc}") from exc
                time.sleep(0.5)
    finally:
        c.close()
