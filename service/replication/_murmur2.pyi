def murmur2(data: bytes | bytearray | memoryview, /) -> int:
    """Kafka's murmur2 of `data`, as an unsigned 32-bit int."""
