"""Asyncio client for the ev.energy v2 API."""
