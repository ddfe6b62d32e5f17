"""The model: DLRM, its dense tower, precision policies, parameters, memory estimate.

dlrm.py       DLRM: forward reads like the paper, backward reverses it; train_step
tower.py      DenseTower (bottom MLP, interaction, top MLP) and its Workspace
precision.py  the precision policies (fp32, split-SGD-BF16): storage and kernels
params.py     the flat dense-parameter buffer's layout, chunk-seeded initialisation
state.py      state-dict names and shapes, and their check
memory.py     the bytes a model needs against the memory available
"""
