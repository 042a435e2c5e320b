"""Dynamic batching: the batching parameters file, the pure merge/pad/split of requests, and the
scheduler that forms batches across requests of every protocol.
"""
