"""monomoe: a whole distributed Mixture-of-Experts layer as one persistent GPU kernel.

``monomoe.MoE`` is the PyTorch module (it needs torch); ``monomoe._C`` is the C++ API with device
addresses as integers (``LayerConfig``, ``Communicator``, ``Layer``). Errors: ``ConfigError`` (a
``ValueError``) names the field or argument and its limit; ``CudaError`` and ``KernelError`` (both
``RuntimeError``) carry the failing call or the kernel's error record.
"""

from ._C import (  # noqa: F401
    Communicator,
    ConfigError,
    CudaError,
    KernelError,
    Layer,
    LayerConfig,
    nccl_versions,
    unique_id,
    version,
)

__version__ = version()

try:
    import torch as _torch  # noqa: F401
except ImportError:  # the C++ API works without torch; the module needs it
    _torch = None

if _torch is not None:
    from .module import MoE, moe_forward  # noqa: F401
