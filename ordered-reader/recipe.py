from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition


def read_in_global_order(bootstrap, topics, emit, stop):
    """Calls emit(msg) for every record of `topics` in global (GSN) order, live,
    until stop() is true: the read_committed contract's recipe."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "ordered-recipe",
                  "isolation.level": "read_committed", "enable.auto.commit": False})
    md = c.list_topics(timeout=10)
    tps = [TopicPartition(t, p, OFFSET_BEGINNING)
           for t in topics for p in md.topics[t].partitions]
    c.assign(tps)  # every partition of the topics
    buffered = []
    while not stop():
        buffered += [m for m in c.consume(1000, timeout=0.1) if m.error() is None]
        positions = [tp.offset for tp in c.position(tps)]
        if min(positions) < 0:  # some partition's position is not known yet
            continue
        m = min(positions)  # every record below m has been delivered
        for r in sorted((r for r in buffered if r.offset() < m), key=lambda r: r.offset()):
            emit(r)
        buffered = [r for r in buffered if r.offset() >= m]
    c.close()
