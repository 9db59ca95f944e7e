"""Page chrome shared by every page: the error guard, teaching boxes, empty states, run banners.

``guard()`` turns any exception inside a page into a readable message (what went wrong, what to do);
the sidebar and the other pages keep working. Streamlit's own control flow (``st.stop``,
``st.rerun``, ``st.switch_page``) raises ``BaseException`` subclasses and passes through untouched.
"""

from __future__ import annotations

import contextlib
import re
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import streamlit as st

from scgraph_core.errors import (
    ConfigError,
    DataError,
    GraphError,
    MemoryGuardError,
    RunError,
    ScgraphError,
    TrainingError,
)
from scgraph_core.runs import Run

from . import state, teaching

PAGES = {
    "data": "pages/data.py",
    "model": "pages/model.py",
    "training": "pages/training.py",
    "embedding": "pages/embedding.py",
    "attention": "pages/attention.py",
    "markers": "pages/markers.py",
    "expression": "pages/expression.py",
    "imputation": "pages/imputation.py",
    "annotate": "pages/annotate.py",
    "runs": "pages/runs.py",
}

_ADVICE = {
    DataError: "Check the file (format, orientation, values) or load another one on the Data page.",
    ConfigError: "Change the setting named in the message on the Model & graph page.",
    GraphError: "Change the graph settings on the Model & graph page (kind, k, built on).",
    MemoryGuardError: "Use fewer cells, the sparse (kNN) option, or a machine with more memory.",
    RunError: "Open the Runs page to see every run on disk and its state.",
    TrainingError: "Start a new run with a lower learning rate or fewer heads.",
}
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>#|~$])")


def md(text: Any) -> str:
    """Text from files or users, escaped so st.markdown shows it as typed (no links, no formatting)."""
    return _MD_SPECIAL.sub(r"\\\1", str(text))


@contextlib.contextmanager
def guard(what: str = "this page") -> Iterator[None]:
    """Show an exception raised inside the block as a message; the rest of the app keeps working."""
    try:
        yield
    except ScgraphError as exc:
        advice = next((a for cls, a in _ADVICE.items() if isinstance(exc, cls)), "")
        st.error(
            f"**{what.capitalize()} could not be shown.** {md(exc)}\n\n{advice}", icon=":material/error:"
        )
    except Exception as exc:  # a bug or an unexpected file: say so, keep the details one click away
        st.error(
            f"**{what.capitalize()} hit an unexpected problem:** {md(type(exc).__name__)}: {md(exc)}\n\n"
            "The other pages still work. Try another setting or run; if it happens again, report it with "
            "the details below.",
            icon=":material/bug_report:",
        )
        with st.expander("Technical details"):
            st.code("".join(traceback.format_exception(exc)), language="text")


def on_click(build: Callable[[], str | bytes], what: str) -> Callable[[], str | bytes]:
    """``build`` for a download button's deferred data, with the guard's promise kept.

    Streamlit calls deferred data when the button is clicked, outside the page's script, where ``guard``
    cannot show a message. If building fails (a result file deleted or changed since the page was drawn, a
    bug), the download is a short text file saying what went wrong and what to do, not a stack trace."""

    def safe() -> str | bytes:
        try:
            return build()
        except Exception as exc:  # any failure becomes the message below
            return (
                f"scgraph could not build {what}: {type(exc).__name__}: {exc}\n\n"
                "The run's files may have been moved, deleted or rewritten since the page was drawn. "
                "Reload the page and download again; the Runs page shows every run on disk and its state.\n"
            )

    return safe


DEEP_LINK = "_deep_link"
NAVIGATED = "_navigated"


def _heal_legacy_navigation(page: str | None) -> None:
    """Send a page opened by its URL on a freshly started server through app.py's navigation.

    Streamlit treats a ``pages/`` folder next to the entry point as its older multipage layout until
    the first ``st.navigation`` call of the server's life; a first visit to ``/embedding`` would then
    run the page without app.py (no sidebar, no page set-up). Switch that off, remember the page and
    rerun: app.py then opens it (see ``open_deep_link``).
    """
    if st.session_state.get(NAVIGATED):
        return  # app.py ran in this session: its navigation is in charge
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:  # a Streamlit without the older layout
        return
    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        if page in PAGES:
            st.session_state[DEEP_LINK] = PAGES[page]
        st.rerun()


def open_deep_link() -> None:
    """In app.py after st.navigation: open the page a first visit asked for (see above)."""
    st.session_state[NAVIGATED] = True
    target = st.session_state.pop(DEEP_LINK, None)
    if target:
        st.switch_page(target)


def header(title: str, caption: str, topic: str | None = None) -> None:
    """The page title, a one-line caption and (collapsed) the teaching box for ``topic``."""
    _heal_legacy_navigation(topic)
    st.title(title)
    st.caption(caption)
    if topic:
        teach(topic)


def teach(topic: str) -> None:
    """A collapsed box explaining the idea behind the page, for a biology student, with its paper."""
    entry = teaching.TOPICS[topic]
    with st.expander(f":material/school: {entry['title']}", expanded=False):
        st.markdown(entry["text"])
        if entry.get("papers"):
            st.markdown("**Where this comes from:** " + "; ".join(entry["papers"]))


def go_button(label: str, page: str, *, key: str, primary: bool = True, icon: str | None = None) -> None:
    """A button that opens another page (``page`` is a key of :data:`PAGES`)."""
    if st.button(label, key=key, type="primary" if primary else "secondary", icon=icon):
        st.switch_page(PAGES[page])


def empty_state(message: str, label: str, page: str, *, key: str) -> None:
    """'Nothing to show yet' with a button to the page that fixes it; ends the page."""
    st.info(message, icon=":material/info:")
    go_button(label, page, key=key)
    st.stop()


def run_labels(infos: Any, describe: Any) -> dict[str, str]:
    """Each run's label in a run list, all distinct: runs that read alike (the same default name, model
    and state) get their folder name added, so picking one never picks its twin."""
    from collections import Counter

    text = {info.id: describe(info) for info in infos}
    seen = Counter(text.values())
    return {rid: f"{words} · {rid}" if seen[words] > 1 else words for rid, words in text.items()}


def fmt_time(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else ""


STATE_ICONS = {
    "queued": ":material/schedule:",
    "running": ":material/progress_activity:",
    "done": ":material/check_circle:",
    "stopped": ":material/stop_circle:",
    "failed": ":material/error:",
    "damaged": ":material/report:",
}


def active_run_or_stop(*, need_result: bool = True, key: str = "empty") -> Run:
    """The active run; without one (or without its result), an empty state that points to the fix."""
    run_id = state.active_run_id()
    if run_id is None:
        empty_state(
            "No run yet: train a model first. The Training page starts one on the loaded dataset "
            "(the quick preset on the demo takes about a minute).",
            "Go to Training",
            "training",
            key=f"{key}-train",
        )
    run = state.store().open(run_id)
    if need_result and not run.file("result.h5ad").exists():
        from scgraph_core import jobs

        status = jobs.status(run)
        if status.get("state") in ("queued", "running"):
            empty_state(
                f"The active run **{md(run.meta.get('name', run.id))}** is still training; its results "
                "appear here when it finishes.",
                "Watch it on the Training page",
                "training",
                key=f"{key}-watch",
            )
        st.warning(
            f"The active run **{md(run.meta.get('name', run.id))}** has no results "
            f"({status.get('state')}: {md(status.get('message', ''))}). Pick another run in the sidebar "
            "or start a new one.",
            icon=":material/warning:",
        )
        go_button("Open the Runs page", "runs", key=f"{key}-runs", primary=False)
        st.stop()
    return run


def run_banner(run: Run, views: dict[str, Any] | None = None) -> None:
    meta = run.meta
    model = (views or {}).get("model") or meta.get("model", "?")
    st.caption(
        f":material/folder_open: Run **{md(meta.get('name', run.id))}** · model {md(model)} · "
        f"dataset {md(meta.get('dataset', '?'))} · {fmt_time(meta.get('created'))}"
    )


def need_view(views: dict[str, Any], key: str, message: str, *, empty_key: str) -> None:
    """Stop the page with ``message`` (and a button to the Runs page) when the result lacks a view."""
    if not views.get(key):
        st.info(message, icon=":material/info:")
        go_button("Choose another run", "runs", key=empty_key, primary=False)
        st.stop()


def active_result(*, key: str):
    """(run, result AnnData, views manifest) of the active run, or an empty state / error and stop."""
    from scgraph_core import interpret

    from . import cache

    run = active_run_or_stop(key=key)
    opened = None
    with guard("opening the run's result"):
        opened = cache.result(run)
    if opened is None:
        st.stop()
    views = interpret.result_views(opened)
    if not views.get("embedding"):
        st.warning(
            "This result file has no views manifest (uns['scgraph']['views']); it was not written by this "
            "version of scgraph. Train the run again.",
            icon=":material/warning:",
        )
        st.stop()
    run_banner(run, views)
    return run, opened, views


_VERDICT_ICONS = {"good": ":material/verified:", "fair": ":material/info:", "poor": ":material/report:"}


def verdict_box(run: Run, adata: Any = None) -> None:
    """How good a finished run is and what to try next (scgraph_core.verdict), with links to the pages."""
    from scgraph_core import verdict

    from . import cache

    if adata is None and run.file("result.h5ad").exists():
        adata = cache.result(run)
    found = verdict.assess_run(run, state.store(), adata=adata)
    with st.container(border=True, key=f"verdict:{run.id}"):
        icon = _VERDICT_ICONS.get(found.level, ":material/help:")
        st.markdown(f"{icon} **How good is it?** {md(found.headline)}")
        for finding in found.findings:
            st.markdown(f"- {md(finding)}")
        others = [s for s in found.scores if not s.chosen and s.ari is not None]
        if others:
            st.caption("The run's other clusterings, against the same labels:")
            for s in others:
                nmi = f", NMI {s.nmi:.2f}" if s.nmi is not None else ""
                st.markdown(f"- {md(s.name)}: ARI {s.ari:.2f}{nmi}, {s.n_clusters} clusters")
        if found.next_steps:
            st.markdown("**What to try next**")
            for i, step in enumerate(found.next_steps):
                st.markdown(f"{i + 1}. {md(step.text)}")
            pages = dict.fromkeys(s.page for s in found.next_steps if s.page in PAGES)
            labels = {"embedding": "Embedding", "model": "Model & graph", "runs": "Runs"}
            cols = st.columns(max(len(pages), 1))
            for col, page in zip(cols, pages, strict=False):
                col.page_link(
                    PAGES[page], label=f"Open {labels.get(page, page)}", icon=":material/arrow_forward:"
                )


def learnt_expression_note(run: Run, adata: Any) -> None:
    """A warning above the gene-level views (learnt expression, P_mu markers) when the run's learnt expression
    does not follow the measured expression (scgraph_core.verdict.learnt_expression_problem). Runs written
    before metrics.json recorded it are measured from their result once (cached)."""
    from scgraph_core import verdict

    from . import cache

    metrics = run.read_json("metrics.json", {}) or {}
    if "learnt_expression" not in metrics:
        metrics = {
            **metrics,
            "learnt_expression": cache.learnt_agreement(str(run.path), cache.result_stamp(run)),
        }
    problem = verdict.learnt_expression_problem(metrics, subject="This run's")
    if problem:
        weight = metrics.get("kl_weight")
        cause = (
            f" This run's KL weight ({weight:.3g}) is the likely cause: the Training page's verdict says what to "
            "change."
            if isinstance(weight, (int, float)) and weight > verdict.STRONG_KL
            else ""
        )
        st.warning(md(problem) + cause, icon=":material/warning:")


# Figure downloads: the camera button on every figure's toolbar saves it in the format chosen in the sidebar.
FIGURE_FORMATS = {"PNG (for slides)": "png", "SVG (for papers; editable)": "svg"}
_FIGURE_FORMAT_KEY = "figure_format"


def chart_config(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Plotly toolbar settings: download as PNG (at twice the screen resolution) or SVG, no logo."""
    fmt = FIGURE_FORMATS.get(st.session_state.get(_FIGURE_FORMAT_KEY, ""), "png")
    config = {
        "displaylogo": False,
        "toImageButtonOptions": {
            "format": fmt,
            "filename": "scgraph-figure",
            "scale": 2 if fmt == "png" else 1,
        },
    }
    config.update(extra or {})
    return config


def chart(where: Any, fig: Any, *, config: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    """Draw a plotly figure in ``where`` (st or a column) with the download settings of :func:`chart_config`;
    a figure that draws only a sample of the cells (a very large run) says so under it."""
    from scgraph_core.plots import drawn_note

    event = where.plotly_chart(fig, config=chart_config(config), **kwargs)
    note = drawn_note(fig) if hasattr(fig, "layout") else None
    if note:
        where.caption(note)
    return event


def figure_format_picker() -> None:
    """The sidebar choice of the download format of every figure."""
    st.radio(
        "Figure downloads",
        list(FIGURE_FORMATS),
        key=_FIGURE_FORMAT_KEY,
        horizontal=True,
        help="The camera button at the top right of every figure saves it in this format.",
    )


def start_run(resolved: Any, source: dict[str, Any], display: str) -> None:
    """Start a background run of ``resolved`` on the loaded dataset, make it the active run, rerun the page."""
    from scgraph_core import jobs

    run = jobs.start(
        resolved,
        jobs.input_record(source["path"], source.get("orientation", "auto"), source.get("format")),
        store=state.store(),
        name=display,
        dataset=str(source.get("name") or source.get("path")),
    )
    state.set_active_run(run.id)
    st.toast(f"Started {display}", icon=":material/rocket_launch:")
    st.rerun()
