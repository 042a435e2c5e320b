"""Pure decisions: plain data in, plain data out, no I/O.

What the children should be (`render`, `serverconfig`), what to create, update or keep and what
status to report (`plan`, `status`), where labels and weights may point (`traffic`), a progressive
rollout's next step (`rollout`), the replicas to run (`autoscale`), the PromQL to ask (`queries`),
and the records the I/O layer fills in (`records`). Nothing here imports kopf, kubernetes, urllib or
an HTTP library (`make lint` checks it with import-linter).
"""
