"""bench's plugin (the ``chainpress.plugins`` entry point): the peer stage types and the
``torch.compile`` runtime (``bench.peers``), and the interleaved timing primitive that
gates with ``max_latency_ms`` use (``bench.timing.time_interleaved``)."""
from chain.runtime import register_timer

from . import peers  # noqa: F401  (registers the peer stage types and their runtime)
from .timing import time_interleaved

register_timer(time_interleaved)
