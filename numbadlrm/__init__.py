"""numbadlrm: autograd-free DLRM training on CPUs with Numba kernels and MPI."""

from .batch import Batch
from .config import DLRMConfig
from .model import DLRM

__all__ = ["DLRM", "Batch", "DLRMConfig"]
__version__ = "0.1.0"
