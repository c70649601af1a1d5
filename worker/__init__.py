"""Celery worker of the GAS service: claims job rows, runs ``core`` in a supervised child process,
streams progress into the database, stores artifacts, finishes the row. Never imports ``api``;
never imports torch in the parent process (the child does)."""
