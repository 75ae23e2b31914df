"""Deploy what the chain made: bundles, a portable graph and Triton repositories
(``export``), an Open Inference Protocol server with metrics and drift alarms
(``serve``), and batch prediction over files (``predict``).

Sits on top of chain/compress like bench; nothing imports it. Importing it loads no
model, starts nothing and changes no library setting.

>>> from deploy.export import export
>>> export("bench-out/artifacts/03-onnx-int8", "out/sst2", "bundle")
"""
