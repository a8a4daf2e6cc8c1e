"""scalenas: search the model to scale -- a base network and its scaling chain, jointly."""

__version__ = "0.1.0"

from scalenas.errors import ScalenasError  # noqa: F401
