"""scgraph_core: the engine behind scgraph (no Streamlit here).

Modules are imported on use, so ``python -m scgraph_core --help`` stays quick::

    from scgraph_core import data, graphs, runs
"""

from __future__ import annotations

__version__ = "0.1.0"
