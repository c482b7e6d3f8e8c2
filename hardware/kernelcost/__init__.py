"""Kernel-level latency predictors (nn-Meter's idea): per-kernel models fitted on measured kernels.

``predictor``: the analytical form and the random forest, with a lookup table as exact cache;
``sources``: measured latencies from public sources (TF-Lite profiles, the ProxylessNAS table);
``target``: :class:`KernelTarget`, a device emulated by predictors fitted on its sources;
``proxyless``: :class:`ProxylessTableTarget`, the ProxylessNAS per-block table itself as a device;
``units``: that table's units (first conv, inverted residuals, last conv, logits) read off a network's kernels;
``measurements`` and ``fewshot``: what ``python -m hardware fit`` reads, and the per-kernel-type scales that
adapt a device's predictors to another device from a few whole-model measurements.
"""

from hardware.kernelcost.predictor import KernelPredictor, KernelSample
from hardware.kernelcost.proxyless import ProxylessTableTarget
from hardware.kernelcost.target import KernelTarget

__all__ = ["KernelPredictor", "KernelSample", "KernelTarget", "ProxylessTableTarget"]
