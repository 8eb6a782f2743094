"""Python client for the Modelport API: `Client`, `ModelportError`, `Prediction`."""

from modelport_client.client import Client, ModelportError, Prediction

__all__ = ["Client", "ModelportError", "Prediction"]
__version__ = "0.1.0"
