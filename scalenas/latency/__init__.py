"""Measured latency: per-layer lookup tables of a space on the user's own device, and a predictor built on them.

- :mod:`scalenas.latency.layers`: the layer configurations of a built network (``network_layers``, the same walk as
  the analytic FLOPs count) and of a whole space (``space_layer_configs``), and a module for each configuration;
- :mod:`scalenas.latency.timing`: the runtimes (PyTorch, ONNX Runtime) that time a module, and the fingerprint of
  the machine they run on;
- :mod:`scalenas.latency.table`: the table file (build, resume, lazy measurement, checks) and the predictor
  (sum of the layers' latencies plus a fitted per-network overhead);
- :mod:`scalenas.latency.targets`: latency values such as ``8ms`` (parsing and formatting).

docs/method.md ("Latency") says what is measured and how the predictor is checked.
"""
