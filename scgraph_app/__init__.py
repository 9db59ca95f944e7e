"""The Streamlit app's helpers (UI only): session state, cached loaders, forms, page chrome, teaching.

Pages in ``pages/`` import from here; every computation is a call into ``scgraph_core``.
"""

from __future__ import annotations
