"""Plain SGD over the flat dense-parameter buffer: params -= lr * grads.

The tables are not here: their update is fused into the embedding backward
(numbadlrm/layers/embedding_bag.py), so no dense table gradient ever exists.
"""

from __future__ import annotations

import numpy as np

from .kernels.elementwise import sgd_update, sgd_update_serial

# Measured at 2 threads (workqueue pool): 313k params 32 us on one thread vs 133 us
# parallel; 2.5M params 348 vs 448 us; 5M params 1063 vs 913 us. Waking the pool costs
# ~100 us, so only buffers past a few million parameters are worth splitting.
SERIAL_BELOW_PARAMS = 4_000_000


def sgd_step(params: np.ndarray, grads: np.ndarray, lr: float) -> None:
    """In place over the whole flat buffer, one kernel call."""
    kernel = sgd_update_serial if params.shape[0] < SERIAL_BELOW_PARAMS else sgd_update
    kernel(params, grads, np.float32(lr))
