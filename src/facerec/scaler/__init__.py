"""Elasticity: the pure scaling policy and the thin loop that applies it."""
