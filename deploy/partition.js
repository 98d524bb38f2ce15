// The Kafka partition of a request's user, for nginx (njs): the state topic's partition of
// every record of the user, as the nodes compute it (service/replication/codec.py
// partition_for_user): Kafka's default partitioner, toPositive(murmur2(key)) % P, on the
// bytes of X-User-ID. nginx then hashes the partition number onto its consistent-hash ring
// (`hash $rl_partition consistent;`), which the nodes with `--placement ring` follow to
// choose each partition's owners: every user lands on an owner.
//
//   js_import partition.js;
//   js_var $rl_partitions 48;   # must equal the state topic's partition count
//   js_set $rl_partition partition.partition;
//
// Plain ES5 with Math.imul: njs 0.7 (Debian 12) and 0.8 (the nginx image) both run it.

// Kafka's Utils.murmur2 (Java client), over an array of bytes: a signed 32-bit int.
function murmur2(bytes) {
    var length = bytes.length;
    var m = 0x5bd1e995;
    var h = 0x9747b28c ^ length;
    var whole = length - (length & 3);
    var i, k;
    for (i = 0; i < whole; i += 4) {
        k = (bytes[i] & 0xff) | ((bytes[i + 1] & 0xff) << 8) |
            ((bytes[i + 2] & 0xff) << 16) | ((bytes[i + 3] & 0xff) << 24);
        k = Math.imul(k, m);
        k ^= k >>> 24;
        k = Math.imul(k, m);
        h = Math.imul(h, m) ^ k;
    }
    switch (length & 3) {
    case 3:
        h ^= (bytes[whole + 2] & 0xff) << 16;
        // falls through
    case 2:
        h ^= (bytes[whole + 1] & 0xff) << 8;
        // falls through
    case 1:
        h ^= bytes[whole] & 0xff;
        h = Math.imul(h, m);
    }
    h ^= h >>> 13;
    h = Math.imul(h, m);
    h ^= h >>> 15;
    return h;
}

// The partition of a key (bytes) among `partitions`: Utils.toPositive clears the sign bit.
function partitionOf(bytes, partitions) {
    return (murmur2(bytes) & 0x7fffffff) % partitions;
}

// js_set handler: the partition of X-User-ID as a decimal string; empty without the header
// (the node answers 400) or when $rl_partitions is not a positive integer (logged).
function partition(r) {
    var user = r.rawVariables.http_x_user_id;
    var partitions = Number(r.variables.rl_partitions);
    if (!(partitions >= 1 && partitions % 1 === 0)) {
        r.error("partition.js: $rl_partitions must be a positive integer, got " +
                r.variables.rl_partitions);
        return "";
    }
    if (user === undefined || user.length === 0) {
        return "";
    }
    return String(partitionOf(user, partitions));
}

export default {partition: partition, partitionOf: partitionOf, murmur2: murmur2};
