"""Chaos at test size on the 3-broker cluster, with a CPU hog on one core, both delivery modes.

The leader of the busiest input partition is SIGKILLed (and restarted) and a scorer is
SIGKILLed while three scorer processes score a fixed-rate stream (``bench.chaos`` scenario
``smoke``; ``make chaos`` runs the long scenarios).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from bench.chaos import STOP_LIMIT_S, heal, run_scenario
from consumers.kafka_client import ensure_topics
from streamscore.dev.cluster import KafkaCluster
from tests.integration.helpers import wait_for

pytestmark = pytest.mark.integration


def test_cluster_replicates_three_ways_with_two_in_sync(kafka_cluster: KafkaCluster) -> None:
    assert kafka_cluster.live_brokers() == {1, 2, 3}
    ensure_topics({"bootstrap.servers": kafka_cluster.bootstrap}, {"t-cluster-rf": 2})
    admin = AdminClient({"bootstrap.servers": kafka_cluster.bootstrap})

    def three_replicas() -> bool:   # a new topic reaches every broker's metadata a moment after its creation
        md = admin.list_topics(timeout=10)
        return all(name in md.topics and md.topics[name].partitions
                   and all(len(p.replicas) == 3 for p in md.topics[name].partitions.values())
                   for name in ("t-cluster-rf", "__consumer_offsets", "__transaction_state"))
    wait_for(three_replicas, 30, "3 replicas of every partition")
    for name in ("t-cluster-rf", "__transaction_state"):
        res = ConfigResource(ConfigResource.Type.TOPIC, name)
        conf = admin.describe_configs([res])[res].result(30)
        assert conf["min.insync.replicas"].value == "2", name


@pytest.mark.parametrize("mode", ["at_least_once", "exactly_once"])
def test_leader_kill_and_scorer_kill_under_a_cpu_hog(tmp_path: Path, kafka_cluster: KafkaCluster, mode: str) -> None:
    try:
        res = run_scenario(kafka_cluster, tmp_path, mode=mode, scenario="smoke", rate=1000.0, seed=13,
                           hog=True, time_limit=170.0)
    finally:
        heal(kafka_cluster)
    detail = f"{res} (scorer logs in {tmp_path})"
    assert res.broker_kills == 1 and res.kills == 1, detail
    assert res.cpu_hog, detail
    assert res.lost == 0 and res.unique_scored == res.events > 0, detail
    if mode == "exactly_once":
        assert res.duplicates == 0, detail
    assert res.crashes == 0, detail
    assert res.exit_codes and all(c == 0 for c in res.exit_codes), detail
    assert res.stop_s_max <= STOP_LIMIT_S, detail
    assert not res.notes, detail
