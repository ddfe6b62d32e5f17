"""The command line: ``numbadlrm train | preprocess | predict | plot | convert | kernels``.

    main.py             the parser (flags generated from the configs) and the dispatch
    preprocess.py       ``numbadlrm preprocess``: raw Criteo TSV -> a memory-mapped directory
    tools.py            the smaller commands: predict, plot
    kernels.py          ``numbadlrm kernels --check op=version [--bench]``: check and time one
    convert.py          ``numbadlrm convert``: to and from the reference's PyTorch format
    reference_flags.py  the reference DLRM's flags with no effect here (notes) or refused

The training run itself lives in numbadlrm/train (usable from Python without the CLI).
"""
