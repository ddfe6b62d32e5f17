"""The reference's PyTorch world: an independent model and optimizers (the test oracle)
and the state-dict converters that ``numbadlrm convert`` uses.

    torch_dlrm.py   the DLRM in PyTorch with autograd, built from the same DLRMConfig
    torch_optim.py  torch.optim.Adagrad and the reference's RWSAdagrad state <-> ours

PyTorch is an optional extra (``pip install 'numbadlrm[torch]'``).
"""
