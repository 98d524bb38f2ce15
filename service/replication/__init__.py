"""Replication over Kafka: the wire codec, the state-log port and its Kafka adapter, other
regions' mirrored topics (read-only), the replicator (flush out, merge in, bootstrap), the
state topic and its inspection."""
