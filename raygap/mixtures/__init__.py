"""Two-component 1-D mixtures of modality gaps; importing registers gmm, smm, lmm in MIXTURES."""
from . import gaussian, laplace, student_t  # noqa: F401
from .base import (RULES, Family, MixtureFit, RawFit, agreement_score,  # noqa: F401
                   balanced_index, fit_mixture)
