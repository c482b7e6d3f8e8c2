"""Hashing: weights shared at random through a hash (HashedNets, :mod:`.hashednets`)."""
