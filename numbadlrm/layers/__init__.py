"""Layers: one op per file, forward and backward side by side, in any precision.

Each validates its arrays (dtype, shape, layout: one-line ValueErrors), allocates nothing
in the hot path, and calls the kernel version that the model's KernelChoice selects.

    linear.py         the linear layer (+ReLU): functions and the Linear layer class
    embedding_bag.py  sum-pooled bags and the fused sparse SGD update (fp32 or split tables)
    interaction.py    the dot / cat interaction
    loss.py           sigmoid + BCE (or weighted BCE, MSE), fused
    bf16.py           bf16 conversions, split/merge, packing: validating wrappers
"""
