"""Studies: one per reproduced claim of the papers, run with ``flatminima study run NAME``."""

from .registry import Study, Summary, get, list_studies, point_key, register, run_study

__all__ = ["Study", "Summary", "get", "list_studies", "point_key", "register", "run_study"]
