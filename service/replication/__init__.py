"""Replication over Kafka: the wire codec, the state-log port and its Kafka adapter, the
replicator (flush out, merge in, bootstrap), the state topic and its inspection."""
