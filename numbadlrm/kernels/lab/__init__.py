"""Your kernels: every module in this folder is imported when the kernel registry loads.

The workflow (README.md, "Write a kernel"):

1. Copy ``examples/lab_embedding_update.py`` here (or write your own module): a Numba
   kernel with the op's calling convention (``numbadlrm kernels`` lists every op's),
   registered with ``numbadlrm.kernels.registry.register(op, name, parallel, serial,
   description)``.
2. ``python -m pytest tests/test_registry.py`` checks every registered version of every
   op against the NumPy reference, yours included (tails, empty bags, repeated indices,
   1 and 2 threads, parallel and serial entries).
3. ``python bench/bench_embedding.py --update-versions v2,mine`` (``--forward-versions``
   for embedding_forward; bench_gemm.py, bench_interaction.py for their ops) times it
   beside the others, with its fraction of the machine's limit.
4. ``python bench/bench_e2e.py --kernels embedding_update=mine`` measures whole training
   steps with it; ``numbadlrm train --kernels embedding_update=mine`` trains with it.

Modules whose name starts with ``_`` are not imported. This folder is read where the
package is imported from: after ``pip install .`` that is the installed copy, not your
checkout. A module anywhere else is loaded with ``--kernel-module PATH`` (``train``,
``kernels``, the benches) or $NUMBADLRM_KERNEL_MODULES, with any install
(numbadlrm/kernels/loader.py); ``numbadlrm kernels --check op=mine --bench`` checks and
times it without pytest.
"""
