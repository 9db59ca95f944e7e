"""Forms generated from the parameter schemas (``scgraph_core.params``): one widget per parameter.

The values a user changes are kept as *overrides* of the chosen preset in session state (a widget's own
state is dropped by Streamlit whenever its page is not shown), so leaving a page and coming back keeps
every choice. Validation is the engine's: ``pipeline.resolve_config`` reports a bad combination as a
``ConfigError`` the page shows next to the form.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import streamlit as st

from scgraph_core import params

from . import state


def _label(info: params.ParamInfo) -> str:
    """The parameter's label (``params.describe`` reads the declaration, else ``params.LABELS``)."""
    return info.label[0].upper() + info.label[1:]


def _shown(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (tuple, list)):
        return ", ".join(str(v) for v in value)
    return str(value)


def _flag(section: str, info: params.ParamInfo) -> str:
    """The ``train`` command's flag for this setting (``--graph-seed``, ``--cluster-k``: prefixed where the
    plain name belongs to another section)."""
    from scgraph_core.__main__ import flag_of
    from scgraph_core.errors import ConfigError

    try:
        return flag_of(state.config_state()["model"], section, info.name)
    except ConfigError:  # an unknown model in a stale session: the plain flag
        return info.flag


def _help(info: params.ParamInfo, base: Any, flag: str | None = None) -> str:
    parts = [info.help[0].upper() + info.help[1:] if info.help else info.name]
    parts.append(f"Preset value: {_shown(base) or 'empty'}.")
    if info.min is not None or info.max is not None:
        lo = "" if info.min is None else f"from {info.min:g} "
        hi = "" if info.max is None else f"up to {info.max:g}"
        parts.append(f"Allowed: {lo}{hi}".strip() + ".")
    if info.optional:
        parts.append("Leave empty for the default behaviour.")
    parts.append(f"Command line: `{flag or info.flag}`.")
    return " ".join(parts)


def _same(a: Any, b: Any) -> bool:
    norm = lambda v: tuple(v) if isinstance(v, (list, tuple)) else v  # noqa: E731
    return norm(a) == norm(b)


def _store(section: str, name: str, widget_key: str, base: Any, kind: str, optional: bool) -> None:
    """on_change: turn the widget's value into an override (or drop it when it equals the preset)."""
    raw = st.session_state.get(widget_key)
    value: Any = raw
    if kind in ("ints", "floats") or (optional and kind in ("int", "float", "str")):
        text = "" if raw is None else str(raw).strip()
        if text == "" and optional:
            value = None
        elif kind in ("ints", "floats"):
            value = text  # the schema parses and validates "128, 128"
        elif kind == "int":
            try:
                value = int(float(text))
            except ValueError:
                value = text
        elif kind == "float":
            try:
                value = float(text)
            except ValueError:
                value = text
        else:
            value = text
    over = state.overrides(section)
    if _same(value, base) or (
        isinstance(value, str) and _same(value.replace(" ", ""), _shown(base).replace(" ", ""))
    ):
        over.pop(name, None)
    else:
        over[name] = value


def schema_form(
    schema: type,
    section: str,
    base: dict[str, Any],
    *,
    key: str,
    only: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    columns: int = 2,
    advanced: bool = True,
    advanced_label: str = "Usually leave alone",
) -> None:
    """Draw the widgets of ``schema`` whose values start at ``base`` (the preset) plus the overrides.

    ``key`` must change when the preset changes, so the widgets start again from the new preset.
    The settings worth changing come first; the rest (``advanced``) go in a collapsed "Usually leave
    alone" expander. A parameter whose part is switched off (``shown_if``) is not drawn: its value stays.
    """
    infos = [
        i
        for i in params.describe(schema)
        if (only is None or i.name in set(only)) and i.name not in set(exclude)
    ]
    over = state.overrides(section)
    values = {**base, **over}
    infos = [i for i in infos if i.shown(values)]
    main = [i for i in infos if not i.advanced]
    extra = [i for i in infos if i.advanced] if advanced else []
    _grid(main, section, base, over, key, columns)
    if extra:
        with st.expander(advanced_label, expanded=False):
            _grid(extra, section, base, over, key, columns)


def _grid(
    infos: list[params.ParamInfo],
    section: str,
    base: dict[str, Any],
    over: dict[str, Any],
    key: str,
    columns: int,
) -> None:
    if not infos:
        return
    cols = st.columns(columns)
    for n, info in enumerate(infos):
        with cols[n % columns]:
            _widget(info, section, base.get(info.name, info.default), over, key)


def _widget(info: params.ParamInfo, section: str, base: Any, over: dict[str, Any], key: str) -> None:
    current = over.get(info.name, base)
    wkey = f"form:{key}:{section}:{info.name}"
    label = _label(info)
    kwargs = {
        "key": wkey,
        "help": _help(info, base, _flag(section, info)),
        "on_change": _store,
        "args": (section, info.name, wkey, base, info.kind, info.optional),
    }
    if info.kind == "bool":
        st.toggle(label, value=bool(current), **kwargs)
    elif info.choices is not None and info.kind in ("str", "int", "float"):
        options = list(info.choices)
        if info.optional:
            options = [None, *options]
        index = options.index(current) if current in options else 0
        st.selectbox(
            label, options, index=index, format_func=lambda v: "(default)" if v is None else str(v), **kwargs
        )
    elif info.kind in ("int", "float") and not info.optional and isinstance(current, (int, float)):
        if info.kind == "int":
            st.number_input(
                label,
                value=int(current),
                min_value=None if info.min is None else int(info.min),
                max_value=None if info.max is None else int(info.max),
                step=1,
                **kwargs,
            )
        else:
            value = float(current)
            step = _float_step(value)
            st.number_input(
                label,
                value=value,
                min_value=None if info.min is None else float(info.min),
                max_value=None if info.max is None else float(info.max),
                step=step,
                format="%g",
                **kwargs,
            )
    else:
        placeholder = "empty = default" if info.optional else None
        st.text_input(label, value=_shown(current), placeholder=placeholder, **kwargs)


def _float_step(value: float) -> float:
    import math

    if value == 0 or not math.isfinite(value):
        return 0.1
    return float(10 ** math.floor(math.log10(abs(value))))
