"""Inference: decode and prepare an upload, micro-batch it through ONNX Runtime, explain it.

Nothing here knows about HTTP; the routes and the fast path call it with bytes already
bounded by the edge (serve/api).
"""
