"""Command-line options made from an estimator's parameters and its docstring.

``fastvi fit MODEL`` offers one option per constructor parameter of the model's class
(:mod:`fastvi._registry`): ``n_components`` becomes ``--n-components``. What the
option accepts, its help text and its choices come from the parameter's entry in the
class's numpydoc "Parameters" section, and its default from the constructor's
signature, so the command line cannot drift from the library:

* ``{'a', 'b'}`` in the type: one of those strings (argparse checks the choice);
* ``bool``: a switch pair, ``--fit-intercept`` / ``--no-fit-intercept``;
* ``int`` / ``float`` (``... or None``: the word ``none`` too);
* ``array-like``: a number or comma-separated numbers (a 1-D array).

Parameters the command line manages itself (``warm_start``, ``verbose``,
``verbose_interval``, ``progress_bar``) are not offered. An option not given is not
passed, so the estimator's own default applies.
"""

from __future__ import annotations

import argparse
import inspect
import re

import numpy as np

__all__ = ["MANAGED", "add_model_options", "model_parameters", "parse_parameters"]

# set by the command line, not by the user: progress is --quiet, a fresh fit is cold
MANAGED = frozenset({"warm_start", "verbose", "verbose_interval", "progress_bar"})

# the least value a parameter accepts on the command line, where the library allows
# less: a fit of 0 iterations fits nothing, so it is refused before any work
_MINIMUM = {"max_iter": 1}

_SECTION = re.compile(r"^(\S[^\n]*)\n-{3,}\s*$", re.MULTILINE)
_ENTRY = re.compile(r"^(\w+(?:\s*,\s*\w+)*)\s*(?::\s*(.*))?$")


def _section(doc, title):
    """The body of numpydoc section ``title`` of ``doc`` (dedented), or ''."""
    doc = inspect.cleandoc(doc or "")
    heads = list(_SECTION.finditer(doc))
    for i, head in enumerate(heads):
        if head.group(1).strip() == title:
            end = heads[i + 1].start() if i + 1 < len(heads) else len(doc)
            return doc[head.end() : end].strip("\n")
    return ""


def parse_parameters(doc):
    """``{name: (type text, description)}`` from a numpydoc "Parameters" section.

    An entry is a line ``name : type`` (or ``a, b : type`` for several names) at the
    section's indentation, followed by its indented description; the description's
    lines are joined into one paragraph (possibly '').
    """
    found = {}
    names, kind, lines = None, "", []

    def close():
        if names:
            text = " ".join(" ".join(lines).split())
            for name in names:
                found[name] = (kind, text)

    for line in _section(doc, "Parameters").splitlines():
        if line and not line[0].isspace():
            match = _ENTRY.match(line.strip())
            close()
            if match is None:
                names, kind, lines = None, "", []
                continue
            names = [n.strip() for n in match.group(1).split(",")]
            kind, lines = (match.group(2) or "").strip(), []
        elif names is not None and line.strip():
            lines.append(line.strip())
    close()
    return found


def _plain(text):
    """A docstring fragment as plain text for ``--help`` (argparse %-formats it)."""
    text = re.sub(r":\w+:`~?(?:[\w.]+\.)?([^`]+)`", r"\1", text)  # :class:`~a.B` -> B
    # ``name`` -> 'name'; ``'value'`` -> 'value'
    text = re.sub(
        r"``(.+?)``",
        lambda m: m.group(1) if "'" in m.group(1) else f"'{m.group(1)}'",
        text,
    )
    return text.replace("%", "%%")


def model_parameters(cls, docs_from=None):
    """The constructor parameters of ``cls`` the command line offers, in order.

    Returns
    -------
    list of (name, default, type text, description)
        ``docs_from`` (a class) documents the parameters ``cls``'s own docstring does
        not.
    """
    docs = parse_parameters(cls.__doc__)
    if docs_from is not None:
        docs = {**parse_parameters(docs_from.__doc__), **docs}
    out = []
    for name, param in inspect.signature(cls).parameters.items():
        if name in MANAGED or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        kind, text = docs.get(name, ("", ""))
        out.append((name, param.default, kind, text))
    return out


# ------------------------------------------------------------------ value parsers
def _make_parser(cast, allow_none, minimum):
    word = "an integer" if cast is int else "a number"

    def parse(text):
        if allow_none and text.strip().lower() == "none":
            return None
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {word}, got {text!r}") from None
        if cast is int and not value.is_integer():
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
        value = cast(value)
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {text}")
        return value

    parse.__name__ = cast.__name__
    return parse


# a count of at least 1 (the command line's --block-rows, --checkpoint-every)
positive_int = _make_parser(int, False, 1)


def _numbers(text):
    """A number, or comma-separated numbers as a 1-D float64 array."""
    try:
        values = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number or comma-separated numbers, got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values[0] if len(values) == 1 and "," not in text else np.array(values)


def add_model_options(parser, cls, docs_from=None, title=None):
    """Add one option per offered parameter of ``cls`` to ``parser``.

    Every option's default is ``argparse.SUPPRESS`` (not set unless given); the
    default the estimator uses is shown in the help. Returns the parameter names.
    """
    group = parser.add_argument_group(title or f"{cls.__name__} options")
    names = []
    for name, default, kind, text in model_parameters(cls, docs_from):
        flag = "--" + name.replace("_", "-")
        help_text = _plain(text) or "(not documented)"
        shown = repr(default) if isinstance(default, str) else str(default)
        help_text += f" (default: {_plain(shown)})"
        options = {"default": argparse.SUPPRESS, "dest": name, "help": help_text}
        lowered = kind.lower()
        choices = re.findall(r"'([^']*)'", kind.split("}")[0]) if "{" in kind else []
        allow_none = default is None or "none" in lowered
        if choices:
            options.update(choices=choices, metavar="{" + ",".join(choices) + "}")
        elif isinstance(default, bool) or lowered.startswith("bool"):
            options["action"] = argparse.BooleanOptionalAction
        elif "array-like" in lowered:
            options.update(type=_numbers, metavar="X[,X...]")
        elif lowered.startswith("int") or (not kind and isinstance(default, int)):
            options.update(
                type=_make_parser(int, allow_none, _MINIMUM.get(name)), metavar="INT"
            )
        elif lowered.startswith("float") or isinstance(default, float):
            options.update(
                type=_make_parser(float, allow_none, _MINIMUM.get(name)),
                metavar="FLOAT",
            )
        else:
            options.update(metavar="VALUE")
        group.add_argument(flag, **options)
        names.append(name)
    return names
