"""Adapters for the ports in `facerec.ports`: one module each, AWS (aioboto3) and local."""
