"""Search and cost shared by method families (issue 10, seam 2).

* :mod:`methods.search.ddpg` — the DDPG agent of AMC (continuous action per layer in
  given bounds), which HAQ's bit-width search shares;
* :mod:`methods.search.resource` — what a candidate model costs (MACs, or latency on the
  run's hardware target), the budget every search keeps within;
* :mod:`methods.search.threads` — PyTorch threads for a search's many tiny forward passes.
"""
