"""The local cluster: Kubernetes on one machine without Docker or a kube-apiserver (development only).

What `make run` starts (`python -m localcluster`): a kube-apiserver stand-in (`fakeapi`: the objects
and verbs in `store`, served over HTTP by `httpapi`), the Deployment/ReplicaSet/EndpointSlice
controllers (`controllers`, deciding in `rollout`, `replicaset`, `endpoints`), a node agent running
pods as processes of this machine (`agent`, `pod`, `container`, translating in `podspec`, probing in
`probes`), Services on 127.0.0.1 (`proxy`), Service names for HTTP clients (`dnsproxy`; both on
`connections`), a real Prometheus (`prometheus`) and the real operator. It is a development-only
distribution (dev/pyproject.toml, installed by `make setup`), never part of the shipped
`modeldeploy` package.
"""
