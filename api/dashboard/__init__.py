"""The dashboard: server-rendered pages under ``/ui`` (Jinja2, htmx 2 + its SSE extension, uPlot for
curves, SVG drawn on the server). Sessions come from an API key (``session.py``); pages read what the
jobs store (``views.py``); drawings are pure functions (``svg.py``). See docs/DASHBOARD.md.
"""
from __future__ import annotations

from .routes import install

__all__ = ["install"]
