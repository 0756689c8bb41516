"""Web tier: the asyncio FastAPI front door. Never imports torch."""
