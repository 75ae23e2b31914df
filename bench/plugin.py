"""bench's plugin (the ``chainpress.plugins`` entry point): the peer stage types and the
``torch.compile`` runtime (``bench.peers``), the OpenVINO and bf16 peers and the
``torch-bf16`` runtime (``bench.peers_openvino``), and the interleaved timing primitive
that gates with ``max_latency_ms`` use (``bench.timing.time_interleaved``)."""
from chain.runtime import register_timer

from . import peers  # noqa: F401  (registers the peer stage types and their runtime)
from . import peers_openvino  # noqa: F401  (OpenVINO, OpenVINO int8 and torch bf16 peers)
from .timing import time_interleaved

register_timer(time_interleaved)
