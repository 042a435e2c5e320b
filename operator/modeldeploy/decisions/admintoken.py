"""Pure: each ModelDeployment's admin token, derived from the operator's key, and when to (re)create
its Secret.

The pods of a ModelDeployment accept routing pushes on their admin port only with the bearer token
mounted from the Secret `<name>-admin-token`. The operator never reads that Secret (it holds no
read access to Secrets at all): it derives the token as HMAC-SHA256(key, "namespace/name/uid")
from one key mounted into its own pod (`--token-key-file`; the chart keeps it in a Secret of the
operator's namespace that the kubelet mounts), creates the Secret with that token, and presents
the same token at every push. So:

- the Secret's content is a function of the ModelDeployment: creating it again after a deletion
  gives the same token, and a create that finds it there (409 AlreadyExists) changes nothing;
- a ModelDeployment deleted and created again under the same name has a new uid, so a new token,
  and a new Secret once the old one is garbage-collected with its old owner;
- a Secret edited by hand (or made by someone else before the operator) cannot be overwritten, as
  the operator may only create Secrets: its pods refuse the operator's token (HTTP 401), status says
  so (Degraded, AdminTokenRejected) with the fix: delete the Secret, and the operator creates it
  again within `RETRY_SECONDS`.

Without a watch the operator does not see a Secret go, so it creates it again (a no-op 409 when it
is there) every `period` seconds, and every `RETRY_SECONDS` while pods refuse the token.
"""

from __future__ import annotations

import hashlib
import hmac

MIN_KEY_BYTES = 16
RETRY_SECONDS = 10.0
REJECTED = "AdminTokenRejected"


def derive(key: bytes, namespace: str, name: str, uid: str) -> str:
    """The admin token of one ModelDeployment (64 hex digits)."""
    return hmac.new(key, f"{namespace}/{name}/{uid}".encode(), hashlib.sha256).hexdigest()


def create_due(created_at: float | None, now: float, refused: bool, period: float) -> bool:
    """Whether to send the Secret's create again: never sent (this operator process), or sent
    `period` seconds ago, or `RETRY_SECONDS` ago while pods refuse the token."""
    if created_at is None:
        return True
    return now - created_at >= (min(RETRY_SECONDS, period) if refused else period)


def refusal(refused: list[str], ready: int, secret: str, namespace: str) -> str:
    """The status message when pods refuse the operator's token."""
    return (f"{len(refused)} of {ready} ready pods refuse the operator's admin token (HTTP 401; {', '.join(sorted(refused)[:3])}"
            f"{', ...' if len(refused) > 3 else ''}): Secret {secret} does not hold the token the operator derives for "
            "this ModelDeployment (edited by hand, or created by someone else or by an earlier operator version), and "
            f"the operator never overwrites a Secret. Delete it (kubectl -n {namespace} delete secret {secret}): the "
            f"operator creates it again within {RETRY_SECONDS:g} s and the pods read the new file (the kubelet "
            "refreshes Secret volumes within about a minute); routing tables reach the pods through their ConfigMap "
            "meanwhile")
