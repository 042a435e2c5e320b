"""Warmup: replaying TF Serving warmup records before a version serves, generating them from the
model's signatures or from REST bodies, and writing warmup files.
"""
