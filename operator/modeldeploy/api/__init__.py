"""The ModelDeployment API: the CRD's pydantic models (`v1alpha1`) and the CRD generator (`crdgen`).

The lowest layer of the operator: it imports nothing else of modeldeploy.
"""
