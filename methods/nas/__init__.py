"""Hardware-aware architecture search: ProxylessNAS, MnasNet-style sample-based search, aging evolution.

:mod:`.space` is the MobileNetV2-like search space, its blocks and the derived architecture file;
:mod:`.supernet` the over-parameterised network with binarized paths; :mod:`.costs` each candidate's
cost asked of the run's target once; :mod:`.searched` records a search and trains, stores and
rebuilds the derived network; the other modules are the methods.
"""
