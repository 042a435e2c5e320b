"""What the server is told: its flags (`flags`, TensorFlow Serving's flag table), the model config
file (`model_config`) and the config protos (`protos`). Pure Python, no TensorFlow: the operator
imports `flags` to check the arguments it renders.
"""
