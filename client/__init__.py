"""Python SDK (:class:`client.sdk.GasClient`) and the ``gas`` CLI of the GAS service."""
from .sdk import GasClient, GasError

__all__ = ["GasClient", "GasError"]
