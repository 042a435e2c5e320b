"""Front-end worker processes (`--frontend_workers=N`): request handling on several cores, the
model in one process.

With N > 1 the process started as model-server is the *model process*: it loads the models,
runs the batcher and TensorFlow, serves the admin port, and starts N *front-end workers*
(`python -m modelserver.frontend`). Each worker binds the gRPC and REST ports itself
(SO_REUSEPORT: the kernel spreads connections over them), decodes and encodes both protocols and
runs the whole request lifecycle (version resolution, routing, input checks, metrics, traces,
payload logging) on a mirror of the model process's versions and labels; only the model call
crosses to the model process, so batches form across every worker's requests and a GPU holds one
copy of each model. Workers never import TensorFlow (`protos.without_tensorflow`).

- `shm`: the per-worker shared memory (tensors larger than a few KiB travel as numpy views on it)
  and the framing of the messages on the worker's UNIX socket.
- `mirror`: the model process's versions, labels, routing and readiness as a snapshot, pushed to
  every worker when they change, and the worker's read-only Manager built from it.
- `pool`: the model process's side: starts, feeds, restarts and drains the workers, aggregates
  their metrics.
- `modelserver.frontend` (beside main.py): the worker process.
"""
