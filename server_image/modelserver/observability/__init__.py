"""What the server tells: Prometheus metrics (`metrics`), request traces (`tracing`) and the
TensorBoard profiler service (`profiler`).
"""
