"""Web tier: the asyncio FastAPI front door. Never imports torch."""

from facerec.web.app import create_app

__all__ = ["create_app"]
