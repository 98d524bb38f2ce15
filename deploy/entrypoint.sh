#!/bin/sh
# Each container names itself after its hostname unless RATELIMITER_NODE_ID is set, so
# `docker compose up --scale node=5` starts nodes that join the cluster by themselves
# (a new node reads the state topic to its end before /readyz says ready).
set -eu
if [ -z "${RATELIMITER_NODE_ID:-}" ]; then
    RATELIMITER_NODE_ID="${HOSTNAME:-$(hostname)}"  # Docker sets HOSTNAME per container
fi
export RATELIMITER_NODE_ID
exec "$@"
