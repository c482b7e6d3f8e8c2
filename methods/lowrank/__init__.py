"""Low-rank and tensor-train factorization of conv and linear layers (issue 16).

:mod:`.ranks` picks ranks (energy threshold, VBMF), :mod:`.decompose` factorizes layers with
TensorLy (truncated SVD, Tucker-2, CP), :mod:`.ttmatrix` is the TT-matrix layer, and
:mod:`.factorized` stores a factorized model (its ``factorized`` architecture rebuilds it).
The methods: :mod:`.lowrank` and :mod:`.tensor_train`.
"""
