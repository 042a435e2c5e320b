"""The activator: where a scaled-to-zero ModelDeployment's requests wait for its first ready pod.

While a ModelDeployment with `autoscaling.minReplicas: 0` has no ready pod, the operator points its
Service's EndpointSlice at this process (Knative's activator design): each ModelDeployment gets its
own pair of ports here (gRPC and REST), so requests need no Host or :authority to be told apart and
both protocols work with the clients' address unchanged. A request that arrives there is held
(`hold.Gate`), the operator learns of it (it long-polls `GET /v1/demand` on the admin port) and
scales the Deployment up; when the operator tells the activator the ready pods (`PUT
/v1/targets/{namespace}/{name}`), the held requests are forwarded to them (`forward_rest`,
`forward_grpc`: raw bytes, no protos), and the operator moves the Service's endpoints to the pods:
from then on the activator is not in the path.

Modules: `hold` (the gate: caps, hold timeout, client deadlines, counts; no I/O), `forward_rest`
(aiohttp), `forward_grpc` (a generic grpc.aio handler), `targets` (one ModelDeployment's listeners),
`admin` (the operator's HTTP API and /metrics), `metrics`, `__main__` (`python -m
modeldeploy.activator`). It never talks to the Kubernetes API: it needs no RBAC at all.
"""
