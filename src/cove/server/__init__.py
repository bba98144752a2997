"""The Cove Hub server: repositories over the Hugging Face Hub HTTP protocol."""

from cove.server.app import create_app
from cove.server.config import Settings

__all__ = ["create_app", "Settings"]
