"""facerec: an elastic face-recognition service."""

__version__ = "0.1.0"
