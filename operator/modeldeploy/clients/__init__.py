"""I/O at the edges: the Kubernetes API (`kube`), Prometheus (`prometheus`) and the model servers'
HTTP ports (`servers`). Each turns the outside world into the records of `decisions` and back.
"""
