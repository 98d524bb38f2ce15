"""Cluster membership: nodes announce themselves on a compacted topic; owners by rendezvous."""
