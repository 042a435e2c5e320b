"""The serving core: versions and labels (`manager`), loaded SavedModels (`servable`), the one
data plane every protocol calls (`dataplane`), how a call runs (`runner`), routing tables
(`routing`), tensors, the error table (`errors`) and the per-request context.
"""
