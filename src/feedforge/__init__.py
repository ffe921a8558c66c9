"""feedforge: an open personalized-feed engine.

Stages (one subpackage each): ``events`` (schema, event log, simulator), ``datasets``
(leak-free training data), ``models`` (retrieval and ranking), ``evaluation``, ``publish``
(online store) and ``serving`` (the FastAPI service).
"""

__version__ = "0.1.0"
