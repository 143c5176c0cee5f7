"""Scripts of the VistaFinetune tiny reference bundle (same entry points as the VISTA3D bundle's ``scripts``)."""

from .early_stop_score_function import score_function

__all__ = ["score_function"]
