"""Serve bundles on existing serving engines: Triton Inference Server and Ray Serve.

trimformer writes no server of its own. ``triton_plan`` / ``triton_repo`` turn a bundle into a
Triton model repository (one model per config of the bank, its ``config.pbtxt`` built with
Triton's own ModelConfig schema from ``tritonclient``); ``ray_app`` / ``ray_run`` deploy a
bundle on Ray Serve (one ``Session`` per replica, Ray Serve's batching, the config picked per
request); ``requests`` turns an HTTP body into a checked feed for either.
"""

from __future__ import annotations

__all__: list[str] = []
