"""Triton Python-backend model: raw logits in; logits and softmax probabilities out (copied as model.py)."""

import json

import numpy as np

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # only Triton's Python backend runs this file; rtk merely copies it
    pb_utils = None

PROBS_OUTPUT = "probabilities"


class TritonPythonModel:
    """Numerically stable softmax over the class axis, per request; logits passed through."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input = config["input"][0]["name"]
        self.outputs = [o["name"] for o in config["output"]]

    def execute(self, requests):
        responses = []
        for request in requests:
            logits = pb_utils.get_input_tensor_by_name(request, self.input).as_numpy()
            z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
            probs = (np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)).astype(np.float32)
            tensors = [pb_utils.Tensor(name, probs if name == PROBS_OUTPUT else logits)
                       for name in self.outputs]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
