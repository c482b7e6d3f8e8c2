"""Quantization and reduced precision (Berthelier et al. 2020, Secs. 2.4-2.5; Aswani et al., B, C, F).

Shared building blocks: :mod:`.uniform` (affine quantization, observers, straight-through
fake quantization); models are stored with :mod:`methods.storage` (codecs, one container). Methods live
in one module each (``ptq``, ``qat``, ``pact``, ``half``, ...) and are configured by
``conf/method/<name>.yaml``.
"""
