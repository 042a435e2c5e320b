"""Warmup: the warmup file on disk (`records`), where a version's warmup requests come from
(`sources`), replaying them before a version serves (`replay`), and the `model-server-warmup`
command that writes a warmup file (`write`).
"""
