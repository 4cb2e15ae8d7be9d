"""One consumer-group member (confluent-kafka) in its own process, so tests can
SIGKILL it.

    python3 group_worker.py BOOTSTRAP GROUP TOPIC OUT_PATH ASSIGNOR [INSTANCE_ID]

Writes one line per event to OUT_PATH (line-buffered, so a SIGKILL loses at
most the line being written):

    ASSIGN p,p,...        partitions added (eager: the whole assignment)
    REVOKE p,p,...        partitions taken away
    MSG p offset value    a record, written *before* its offset is committed
    UNCOMMITTED p offset  its commit failed for good (it may be redelivered)
    CLOSED                after a clean close (SIGTERM)

Every record is committed synchronously before the next one is polled, so a
member that leaves cleanly hands over exactly what it consumed; one that is
killed may see its last record redelivered (at-least-once).
"""

from __future__ import annotations

import signal
import sys
import time

from confluent_kafka import Consumer, KafkaError, KafkaException

RETRIABLE_COMMIT = {
    KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.NOT_COORDINATOR,
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError._TIMED_OUT,
    KafkaError._TRANSPORT,
}


def main() -> int:
    bootstrap, group, topic, out_path, assignor = sys.argv[1:6]
    instance = sys.argv[6] if len(sys.argv) > 6 else None
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    conf = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "partition.assignment.strategy": assignor,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 500,
        "fetch.wait.max.ms": 100,
        "topic.metadata.refresh.interval.ms": 2000,
    }
    if instance:
        conf["group.instance.id"] = instance
    out = open(out_path, "a", buffering=1)

    def parts(ps) -> str:
        return ",".join(str(p.partition) for p in sorted(ps, key=lambda p: p.partition))

    c = Consumer(conf)
    c.subscribe([topic],
                on_assign=lambda _c, ps: out.write(f"ASSIGN {parts(ps)}\n"),
                on_revoke=lambda _c, ps: out.write(f"REVOKE {parts(ps)}\n"),
                on_lost=lambda _c, ps: out.write(f"REVOKE {parts(ps)}\n"))
    while not stop:
        m = c.poll(0.2)
        if m is None:
            continue
        if m.error() is not None:
            if m.error().code() != KafkaError._PARTITION_EOF:
                out.write(f"ERROR {m.error()}\n")
            continue
        out.write(f"MSG {m.partition()} {m.offset()} {m.value().decode()}\n")
        for attempt in range(50):
            try:
                c.commit(message=m, asynchronous=False)
                break
            except KafkaException as e:
                code = e.args[0].code()
                if code not in RETRIABLE_COMMIT or attempt == 49:
                    out.write(f"UNCOMMITTED {m.partition()} {m.offset()} {e.args[0]}\n")
                    break
                time.sleep(0.1)  # client-side commit backoff
    c.close()
    out.write("CLOSED\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
