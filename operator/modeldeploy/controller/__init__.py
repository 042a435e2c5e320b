"""The running operator: kopf handlers feeding a cache and a work queue, and the reconcile that runs
observe (clients) -> plan (decisions) -> execute (clients) -> report for one ModelDeployment.
"""
