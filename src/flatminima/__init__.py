"""flatminima: where in the loss landscape does a network end up?

Entropic optimizers that seek wide flat minima, measures of flatness, the jamming transition,
landscape exploration (minima, saddles, disconnectivity graphs) and the local entropy of shallow
networks, all on one functional core, :class:`Landscape`.
"""

from .errors import FlatminimaError
from .landscape import Landscape

__version__ = "0.1.0"
__all__ = ["Landscape", "FlatminimaError", "__version__"]
