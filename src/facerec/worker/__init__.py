"""App tier: the batched recognition worker."""
