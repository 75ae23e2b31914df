"""One way to reach Ray for every chainpress command that can spread work over a cluster.

``address``: ``local`` starts a Ray instance in this process with every CPU of the
machine (what the tests use), ``auto`` joins the cluster this machine belongs to,
``ray://host:10001`` a remote one. Ray is an optional dependency (``chainpress[ray]``):
without it the command says how to install it instead of failing on an import.
"""
from __future__ import annotations

import os

from .errors import SpecError


def connect(address: str, needs: str = "Ray", extra: str = "ray", pip: str = "ray"):
    """The ``ray`` module, initialised once per process (a second call reuses the connection)."""
    try:
        import ray
    except ImportError:
        raise SpecError(f"--ray needs {needs}: pip install 'chainpress[{extra}]' (or pip install '{pip}')") from None
    if not ray.is_initialized():
        kwargs = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        try:
            if address == "local":
                ray.init(num_cpus=os.cpu_count(), **kwargs)
            else:
                ray.init(address=address, **kwargs)
        except ConnectionError as e:
            raise SpecError(f"--ray {address}: no Ray cluster there ({str(e).splitlines()[0]}); start one "
                            "with `ray start --head` or pass --ray local") from None
    return ray


def cpus(ray) -> float:
    return ray.cluster_resources().get("CPU", 0)
