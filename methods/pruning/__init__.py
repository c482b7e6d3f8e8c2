"""Pruning methods: unstructured (magnitude, AGP), structured (filter, SSL) and automated (AMC, CompactNet, NetAdapt).

Shared building blocks, reused across the family:

* :mod:`methods.pruning.masks` — unstructured weight masks and their persistence during fine-tuning;
* :mod:`methods.pruning.structured` — dependency-aware physical channel removal (Torch-Pruning's
  DependencyGraph) and the pruned-model file;
* :mod:`methods.pruning.criteria` — filter importance criteria (l1, l2, taylor, fpgm, thinet).
"""
