"""Shared persistence of the GAS service: settings, SQLAlchemy models and sessions, the job state
machine, the artifact store and the queue dispatcher. Used by both ``api`` and ``worker`` (which
never import each other). Imports neither torch nor FastAPI nor Celery's worker side."""
