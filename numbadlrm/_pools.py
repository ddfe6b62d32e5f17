"""Thread pools that sleep instead of spinning between calls. Import before numpy and numba.

The command line (numbadlrm/cli.py) and the benches import this first; the library itself
never changes the process environment.

numbadlrm alternates OpenBLAS GEMMs with Numba kernels, two thread pools on the same
cores. OpenBLAS's idle workers spin for 2^28 cycles (~70 ms) after each call and Numba's
OpenMP workers spin too, so on a 2-core machine each pool's next parallel call waits for
the other's spinning thread to lose its time slice: config a at 2 threads measured 58 ms
per step, against 2.3-3.4 ms with the settings below (3.2 ms on one thread).

- OPENBLAS_THREAD_TIMEOUT=4: OpenBLAS workers sleep after 2^4 cycles (read when numpy
  loads OpenBLAS).
- NUMBA_THREADING_LAYER=workqueue: Numba's own pool, whose workers wait on a condition
  variable. (OMP_WAIT_POLICY=passive does the same for Numba's OpenMP pool, but PyTorch
  shares that libgomp, and passive waiting costs PyTorch 2x at config a; the benches
  leave PyTorch's runtime at its defaults.) workqueue does not allow parallel kernels
  launched from two Python threads at once; the benches launch from one.

Settings already in the environment are kept, and nothing is set once numpy or numba is
loaded (too late to take effect, and a library user's process is theirs to configure).
"""

import os
import sys

SETTINGS = {"OPENBLAS_THREAD_TIMEOUT": "4", "NUMBA_THREADING_LAYER_PRIORITY": "omp tbb workqueue"}
if "numpy" not in sys.modules and "numba" not in sys.modules:
    for _name, _value in SETTINGS.items():
        os.environ.setdefault(_name, _value)


def describe() -> str:
    return "pools:    " + ", ".join(f"{k}={os.environ.get(k)}" for k in SETTINGS)
