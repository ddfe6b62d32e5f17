import numba
import pytest


@pytest.fixture(params=[1, 2], ids=["threads1", "threads2"])
def threads(request):
    """Run a test at 1 and at 2 Numba threads (capped by the machine), then restore."""
    n = min(request.param, numba.config.NUMBA_NUM_THREADS)
    old = numba.get_num_threads()
    numba.set_num_threads(n)
    yield n
    numba.set_num_threads(old)
