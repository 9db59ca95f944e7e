"""Figures for the app (and notebooks): plotly figures and a pyvis cell-graph page. No Streamlit here.

Every builder takes arrays or tables and returns a ``plotly.graph_objects.Figure`` (or, for the
attention graph, a self-contained HTML string): the caller decides where it goes. Scatter plots of
cells use WebGL (``Scattergl``), which stays responsive with 100,000 cells. Each point carries its
cell's row number in ``customdata`` so a selection on the plot maps back to cells
(:func:`selected_cells`). Browsers give a page only a few WebGL contexts (each WebGL figure takes its
own, and the oldest go blank past the limit), so many colourings of the same cells are drawn as one
figure with subplots (:func:`embedding_panels`), with SVG markers when there are few points in all.

The attention graph (:func:`attention_graph_html`) is built with pyvis and rendered through this
package's own template (package data, ``scgraph_core/assets/attention_graph.html``): the vis-network
library is inlined from the pyvis package (nothing is fetched from the internet), the node and edge
data are embedded with Jinja's ``tojson`` (which escapes ``<``, ``>``, ``&`` and quotes), the legend
is HTML-escaped, and vis-network draws labels on a canvas and tooltips with ``innerText``. A cell type
called ``<script>`` therefore appears as text and never runs.
"""

from .attention_graph import (  # noqa: F401
    attention_graph_html,
    graph_data_json,
)
from .embedding import (  # noqa: F401
    Panel,
    drawn_note,
    drawn_rows,
    embedding_panels,
    embedding_scatter,
    selected_cells,
)
from .imputation import (  # noqa: F401
    gene_gene_figure,
    imputation_histogram,
)
from .qc import (  # noqa: F401
    qc_figure,
    qc_metrics,
)
from .style import (  # noqa: F401
    ATTENTION_COLORSCALE,
    ATTENTION_TEMPLATE,
    LAYOUT,
    MAX_LEGEND,
    MISSING_COLOR,
    NOISE_COLOR,
    NOISE_NAMES,
    PALETTE,
    SVG_MAX_POINTS,
    as_labels,
    category_colors,
    category_order,
    category_sort_key,
    hover_safe,
    is_categorical,
    label_colors,
    label_safe,
    marker_size,
    natural_key,
    obs_colors,
    title_safe,
)
from .tables import (  # noqa: F401
    composition_figure,
    dot_plot_figure,
    gene_weight_figure,
    group_heatmap_figure,
    heatmap_figure,
    volcano_figure,
)
from .training import (  # noqa: F401
    loss_figure,
    loss_terms,
    round_series,
    round_table,
    rounds_figure,
    stage_family,
    validation_figure,
)
