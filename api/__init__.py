"""FastAPI application of the GAS service (validates, writes job rows, enqueues, serves status,
reports and artifacts). No training code: never imports torch, nor ``worker``."""
