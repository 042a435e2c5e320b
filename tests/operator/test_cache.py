"""The operator's cache of watched objects (cache.py): newest wins, our own writes' echoes are not
news, deletions, counts."""

from __future__ import annotations

from modeldeploy.controller.cache import Cache


def obj(rv: str, kind: str = "Deployment", name: str = "m", **extra: object) -> dict:
    return {"kind": kind, "metadata": {"name": name, "namespace": "ml", "resourceVersion": rv, **extra}}


def test_the_echo_of_our_write_is_not_news_anything_else_is() -> None:
    c = Cache()
    assert c.seen(obj("5"))  # listed: news
    c.wrote(obj("8"))
    assert not c.seen(obj("8"))  # the watch event of our own write
    assert c.seen(obj("9"))  # someone else's change (the Deployment controller's status, a hand edit)
    assert c.get("Deployment", "ml", "m")["metadata"]["resourceVersion"] == "9"  # type: ignore[index]


def test_an_event_older_than_our_write_does_not_replace_it() -> None:
    c = Cache()
    c.wrote(obj("12"))
    assert c.seen(obj("11"))  # an event from before our write, arriving after its answer
    assert c.get("Deployment", "ml", "m")["metadata"]["resourceVersion"] == "12"  # type: ignore[index]


def test_deletions_and_counts() -> None:
    c = Cache()
    c.seen(obj("3", kind="ModelDeployment", name="a"))
    c.seen(obj("4", kind="ModelDeployment", name="b"))
    c.seen(obj("5"))
    assert c.count("ModelDeployment") == 2 and c.count("Deployment") == 1
    c.deleted(obj("6", kind="ModelDeployment", name="a"))
    assert c.get("ModelDeployment", "ml", "a") is None and c.count("ModelDeployment") == 1
    c.wrote(obj("20"))  # re-created by us after a deletion we have not seen yet
    c.deleted(obj("7"))  # that older deletion arrives: the new object stays
    assert c.get("Deployment", "ml", "m") is not None


def test_managed_fields_are_kept_as_managers_only() -> None:
    """Their field sets are large; the operator reads only who manages a child and how."""
    c = Cache()
    c.seen(obj("1", managedFields=[{"manager": "modeldeploy", "operation": "Apply", "fieldsType": "FieldsV1",
                                    "fieldsV1": {"f:spec": {}}, "time": "2026-01-01T00:00:00Z"},
                                   {"manager": "kube-controller-manager", "operation": "Update", "subresource": "status",
                                    "fieldsV1": {"f:status": {}}}]))
    assert c.get("Deployment", "ml", "m")["metadata"]["managedFields"] == [  # type: ignore[index]
        {"manager": "modeldeploy", "operation": "Apply"},
        {"manager": "kube-controller-manager", "operation": "Update", "subresource": "status"}]
