"""Final-answer extraction and mathematical-equivalence grading.

Three functions make the public API:

- :func:`extract_answer` pulls the final answer out of a solution: an ``<answer>`` tag, a
  PRM800K-style ``# Answer`` line, the last ``\\boxed{}``/``\\fbox{}``, else the last line.
- :func:`normalize_answer` applies PRM800K / Hendrycks-MATH style string normalisation
  (dollars, ``\\text{}``, units and trailing unit text, degrees, percent, ``x=`` and
  ``\\theta\\in`` prefixes, thousands separators, ``\\dfrac``, ``\\frac12``, ``\\sqrt2``, ``.5``,
  trailing zeros, spaces, ...); matrix row breaks ``\\\\`` are kept.
- :func:`grade_answer` decides equivalence, cheapest test first: plain integers (microseconds,
  no sympy), equal normalised strings, exact rational comparison of simple numbers, matrices
  entry by entry (a scalar factor in front multiplied in), unions of intervals interval by
  interval (as a set of intervals), elementwise comparison of tuples/intervals and unordered
  comparison of lists/sets (``a\\pm b`` counts as the list of its two values), and finally
  math-verify (sympy) on the LaTeX.

The math-verify step runs in one reusable worker *process* with a hard wall-clock bound: on
timeout the worker is killed (and a fresh one started in the background) and the answer is
graded False. math-verify's own ``signal.alarm`` timeout only works in the main thread and
cannot interrupt long C-level big-integer work, so it is not relied on. Starting the worker
the first time (importing sympy) is not counted against ``timeout``. Nothing here raises on
junk input.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import select
import subprocess
import sys
import threading
import time
from fractions import Fraction
from functools import lru_cache

__all__ = ["extract_answer", "normalize_answer", "grade_answer"]

_STARTUP_TIMEOUT = 60.0  # seconds allowed for a fresh worker to import sympy/math-verify
_MAX_VERIFY_CHARS = 5000  # longer answer pairs are junk: never sent to sympy

# ----------------------------------------------------------------------------- extraction

_ANSWER_TAG = re.compile(r"<answer>(.*?)(?:</answer>|\Z)", re.DOTALL | re.IGNORECASE)
_ANSWER_LINE = re.compile(r"^[ \t]*#+[ \t]*Answer\b[ \t]*:?", re.MULTILINE | re.IGNORECASE)
_BOX_START = re.compile(r"\\(?:boxed|fbox)\b")


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}``/``\\fbox{...}`` with balanced braces (or ``\\boxed x``)."""
    for m in reversed(list(_BOX_START.finditer(text))):
        i = m.end()
        while i < len(text) and text[i] in " \t":
            i += 1
        if i < len(text) and text[i] == "{":
            depth = 0
            for j in range(i, len(text)):
                if text[j] == "{":
                    depth += 1
                elif text[j] == "}":
                    depth -= 1
                    if depth == 0:
                        return text[i + 1 : j].strip()
            continue  # unbalanced: try an earlier box
        if i > m.end():  # "\boxed 5": the next token
            tok = re.match(r"[^\s$]+", text[i:])
            if tok:
                return tok.group(0)
    return None


def extract_answer(text: str) -> str | None:
    """The final answer of a solution, or None when there is none.

    Priority: the last ``<answer>...</answer>`` tag (an unclosed tag runs to the end of the
    text), then a ``# Answer`` line (``"# Answer\\n\\n5"`` or ``"# Answer: 5"``; everything after
    the marker), then the last balanced ``\\boxed{...}``/``\\fbox{...}``, else the last non-empty
    line. A box inside the tag or after the marker is unwrapped. Never raises.
    """
    try:
        if not isinstance(text, str) or not text.strip():
            return None
        tags = _ANSWER_TAG.findall(text)
        if tags and tags[-1].strip():
            content = tags[-1].strip()
            return _last_boxed(content) or content
        marks = list(_ANSWER_LINE.finditer(text))
        if marks:
            after = text[marks[-1].end() :].strip()
            if after:
                return _last_boxed(after) or after
        boxed = _last_boxed(text)
        if boxed is not None:
            return boxed
        if marks:  # an empty "# Answer" section: the solution is unfinished
            return None
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        return lines[-1] if lines else None
    except Exception:
        return None


# -------------------------------------------------------------------------- normalisation

_TEXT_CMD = re.compile(
    r"\\(?:text|textbf|textit|textrm|textnormal|mathrm|mathbf|mathit|mathsf|mbox|operatorname)"
    r"\s*\{([^{}]*)\}"
)
_UNITS = (
    "degree|cm|centimeter|mm|millimeter|km|kilometer|meter|metre|mile|mph|second|minute|min|"
    "hour|hr|day|week|month|year|foot|feet|ft|inch|inches|yard|yd|dollar|cent|unit|sq|square|"
    "cubic|pound|lb|ounce|oz|gram|kg|liter|litre|gallon|acre|way|integer|point|digit|student|"
    "person|people|meal|edge|page|book|cookie|ticket|child|children|time"
)
_UNIT_WORD = re.compile(rf"(?:{_UNITS})(?:e?s)?\.?", re.IGNORECASE)
_MATH_WORDS = frozenset("pi sqrt mod log ln exp sin cos tan sec csc cot inf infinity".split())
# words that change the value or meaning of what they follow: never stripped as units
_NOT_UNITS = frozenset(
    "hundred hundreds thousand thousands million millions billion billions trillion trillions dozen "
    "dozens and or not no none only never always even odd positive negative prime rational irrational "
    "real complex undefined true false i e".split()
)
# trailing unit text: "\text{ inches per second}", "\mbox{cm}^2"
_UNIT_TEXT = re.compile(
    r"\\(?:text|textrm|textnormal|mbox)\s*\{\s*([a-zA-Z][a-zA-Z ./-]*?)\s*\}\s*(?:\^\s*\{?\d\}?)?\s*\.?$"
)
_PLAIN_TEXT = re.compile(r"\\(?:text[a-z]*|mbox)\s*\{[^{}]*\}")
_GREEK = (
    "alpha|beta|gamma|delta|epsilon|varepsilon|zeta|eta|theta|vartheta|iota|kappa|lambda|mu|nu|xi|"
    "rho|varrho|sigma|tau|upsilon|phi|varphi|chi|psi|omega|Gamma|Delta|Theta|Lambda|Xi|Sigma|"
    "Upsilon|Phi|Psi|Omega|ell"
)  # no \pi: a constant, not a variable
_VAR = rf"(?:[a-zA-Z]|\\(?:{_GREEK})(?![a-zA-Z]))(?:_\{{?\w+\}}?)?"  # x, x_1, \theta, \theta_{0}
_VAR_IN = re.compile(rf"^{_VAR}\s*\\in(?![a-zA-Z])")
_VAR_PREFIX = re.compile(rf"^{_VAR}\s*(?:=|\\in(?![a-zA-Z]))\s*")
_FRAC_ARG = r"(\{[^{}]*\}|\\[a-zA-Z]+|[^{}\s\\])"
_FRAC_SHORT = re.compile(r"\\frac(?![a-zA-Z])\s*" + _FRAC_ARG + r"\s*" + _FRAC_ARG)
_SQRT_SHORT = re.compile(r"\\sqrt(?![a-zA-Z])\s*([^{\[\s\\])")
_THOUSANDS = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_INT = re.compile(r"[-+]?\d+")


def _int_eq(a: str, b: str) -> bool:
    """Equality of two ``[-+]?\\d+`` strings without int() (no digit limit, no allocation)."""

    def canon(s: str) -> str:
        digits = s.lstrip("+-").lstrip("0")
        return ("-" if s.startswith("-") and digits else "") + (digits or "0")

    return canon(a) == canon(b)


def _wrap(arg: str) -> str:
    return arg if arg.startswith("{") else "{" + arg + "}"


def _strip_outer_braces(s: str) -> str:
    while len(s) >= 2 and s[0] == "{" and s[-1] == "}":
        depth = 0
        for i, c in enumerate(s):
            depth += c == "{"
            depth -= c == "}"
            if depth == 0 and i < len(s) - 1:
                return s  # "{a}{b}": the first brace closes early
        s = s[1:-1].strip()
    return s


def _strip_units(s: str) -> str:
    """Drop trailing unit/measure words after a number: ``5 cm`` ``10cm^2`` ``3 apples``."""
    if len(s) > 200:
        return s
    m = re.search(r"(?<=[\d}).])\s*([a-zA-Z][a-zA-Z .]*?)\s*(?:\^\s*\{?\d\}?)?\s*\.?$", s)
    if not m or not re.search(r"\d", s[: m.start()]):
        return s
    words = m.group(1).replace(".", " ").split()
    glued = m.start(1) == m.start()  # no space between the number and the first word
    if any(w.lower() in _MATH_WORDS or w.lower() in _NOT_UNITS for w in words):
        return s
    if all(len(w) >= 2 for w in words) and (not glued or _UNIT_WORD.fullmatch(words[0])):
        return s[: m.start()].rstrip()
    return s


def _strip_unit_text(s: str) -> str:
    """Drop a trailing ``\\text{...}``/``\\mbox{...}`` of unit words after any math expression:
    ``12\\pi \\text{ inches per second}``, ``5\\sqrt{2}\\text{ cm}^2``. An answer that is only text
    (``\\text{(A)}``, ``\\text{Monday}``), text after an operator, and words that change the value
    (``\\text{ million}``, ``\\text{ only}``) are kept."""
    m = _UNIT_TEXT.search(s)
    if not m or len(s) > 500:
        return s
    words = re.split(r"[\s./-]+", m.group(1).lower())
    if any(w in _NOT_UNITS or w in _MATH_WORDS for w in words):
        return s
    head = re.sub(r"(?:\\[!,;: ]|~|\s)+$", "", s[: m.start()])
    if not re.search(r"[\w\\]", _PLAIN_TEXT.sub("", head)) or head[-1] in "+-*/=,(^_{&<>:":
        return s
    return head


@lru_cache(maxsize=8192)
def normalize_answer(s: str) -> str:
    """PRM800K / Hendrycks-MATH style normalisation of an answer string (never raises)."""
    try:
        s = str(s).strip()
        boxed = _last_boxed(s)
        if boxed is not None and re.fullmatch(r"\\(?:boxed|fbox)\s*\{.*\}", s, re.DOTALL):
            s = boxed
        s = s.replace("\\$", "").replace("$", "")
        s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
        s = s.replace("\\displaystyle", "").replace("{,}", ",")
        s = _strip_unit_text(s)
        for _ in range(5):  # unwrap nested \text{...}
            s, n = _TEXT_CMD.subn(r"\1", s)
            if not n:
                break
        s = re.sub(r"\\(?:left|right|big|Big|bigg|Bigg)(?![a-zA-Z])", "", s)
        s = re.sub(r"(\\\\)|\\[!,;: ]|~", r"\1", s)  # spacing commands go, row breaks \\ stay
        s = re.sub(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|°", "", s)
        s = s.replace("\\%", "").replace("%", "")
        s = re.sub(r"\s+(?:and|or)\s+", ",", s)
        s = s.strip().rstrip(".").strip()
        s = _strip_units(s)
        if s.count("=") == 1 or _VAR_IN.match(s):
            s = _VAR_PREFIX.sub("", s, count=1)
        # whitespace: keep one space only where it ends a command before a letter ("\pi r")
        s = re.sub(r"(\\[a-zA-Z]+)\s+(?=[a-zA-Z])", "\\1\x00", s)
        s = re.sub(r"\s+", "", s).replace("\x00", " ")
        s = _strip_outer_braces(s)
        s = _FRAC_SHORT.sub(lambda m: "\\frac" + _wrap(m.group(1)) + _wrap(m.group(2)), s)
        s = _SQRT_SHORT.sub(r"\\sqrt{\1}", s)
        if _THOUSANDS.fullmatch(s):
            s = s.replace(",", "")
        s = re.sub(r"(?<![\d.])\.(\d)", r"0.\1", s)  # .5 -> 0.5
        s = re.sub(r"(\d\.\d*?)0+(?![\d.\\])", r"\1", s)  # 2.50 -> 2.5, 3.0 -> 3.
        s = re.sub(r"(\d)\.(?![\d\\])", r"\1", s)  # 3. -> 3 (not 0.\overline{3})
        m = re.fullmatch(r"\(([A-Z])\)", s)  # multiple choice "(B)"
        if m:
            s = m.group(1)
        return s
    except Exception:
        return str(s) if isinstance(s, str) else ""


# -------------------------------------------------------------------------------- grading

_SIMPLE = re.compile(
    r"(?P<sign>[-+]?)(?:(?P<num>\d+(?:\.\d*)?|\.\d+)(?:/(?P<den>\d+))?"
    r"|\\frac\{(?P<fn>[-+]?\d+)\}\{(?P<fd>[-+]?\d+)\})"
)


_REPEATING = re.compile(r"(?P<sign>[-+]?)(?P<int>\d*)\.(?P<fixed>\d*)\\overline\{(?P<rep>\d+)\}")


def _repeating_fraction(s: str) -> Fraction | None:
    """Exact value of a repeating decimal ``0.1\\overline{6}`` (= 1/6); None for anything else."""
    m = _REPEATING.fullmatch(s)
    if not m or len(s) > 100:
        return None
    fixed, rep = m.group("fixed"), m.group("rep")
    val = Fraction(int(m.group("int") or 0)) + Fraction(int(fixed or 0), 10 ** len(fixed))
    val += Fraction(int(rep), 10 ** len(fixed) * (10 ** len(rep) - 1))
    return -val if m.group("sign") == "-" else val


def _to_fraction(s: str) -> Fraction | None:
    """Exact value of an int, decimal, repeating decimal (``0.\\overline{3}``), ``a/b`` or
    ``\\frac{a}{b}``; None otherwise."""
    if "\\overline" in s:
        return _repeating_fraction(s)
    m = _SIMPLE.fullmatch(s)
    if not m or len(s) > 100:
        return None
    if m.group("num") is not None:
        val = Fraction(m.group("num"))
        if m.group("den") is not None:
            if int(m.group("den")) == 0:
                return None
            val /= int(m.group("den"))
    else:
        if int(m.group("fd")) == 0:
            return None
        val = Fraction(int(m.group("fn")), int(m.group("fd")))
    return -val if m.group("sign") == "-" else val


def _split_top(s: str) -> list[str]:
    """Split on commas outside any brackets/braces."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(s):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(s[start:i])
            start = i + 1
    parts.append(s[start:])
    return parts


def _encloses(s: str) -> bool:
    """Whether the bracket that opens ``s`` closes it: ``(1,2]`` yes, ``(1,2)\\cup(3,4)`` no."""
    depth = 0
    for i, c in enumerate(s):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0:
                return i == len(s) - 1
    return False


_PM = re.compile(r"\\(?:pm|mp)(?![a-zA-Z])")


def _expand_pm(s: str) -> list[str]:
    """``a\\pm b`` as its two values ``[a+b, a-b]`` (``\\mp`` likewise); ``[s]`` unless exactly one."""
    signs = _PM.findall(s)
    if len(signs) != 1:
        return [s]
    return [_PM.sub("+", s), _PM.sub("-", s)]


def _as_sequence(s: str) -> tuple[str, list[str]] | None:
    """``(kind, elements)`` for ``(a,b)``/``[a,b)``/``\\{a,b\\}``/``a,b``; None if not a list.

    An element of a set or bare list holding one ``\\pm`` counts as its two values (so ``\\pm 2``
    is the list ``+2,-2``); elements of tuples and intervals are kept as written.
    """
    if s.startswith("\\{") and s.endswith("\\}") and _encloses(s[1:]):
        inner = [v for p in _split_top(s[2:-2]) for v in _expand_pm(p)]
        return ("set", inner) if len(inner) > 1 else None
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]" and _encloses(s):
        inner = _split_top(s[1:-1])
        return (s[0] + s[-1], inner) if len(inner) > 1 else None
    parts = [v for p in _split_top(s) for v in _expand_pm(p)]
    return ("set", parts) if len(parts) > 1 else None


_UNION = re.compile(r"\\cup(?![a-zA-Z])|(?<=[)\]}])U(?=[(\[\\])")


def _split_union(s: str) -> list[str] | None:
    """The parts of a top-level union ``A\\cup B\\cup ...`` (``(1,2)U(3,4)`` too); None if none."""
    if "\\cup" not in s and "U" not in s:
        return None
    parts: list[str] = []
    depth = start = i = 0
    while i < len(s):
        if s[i] in "([{":
            depth += 1
        elif s[i] in ")]}":
            depth -= 1
        elif depth == 0 and (m := _UNION.match(s, i)):
            parts.append(s[start:i])
            start = i = m.end()
            continue
        i += 1
    parts.append(s[start:])
    return parts if len(parts) > 1 and all(parts) else None


_MATRIX = re.compile(
    r"(?P<factor>.*?)(?P<open>[(\[]?)\\begin\{(?P<env>[pbB]?matrix|smallmatrix|array)\}(?:\{[^{}]*\})?"
    r"(?P<body>.*)\\end\{(?P=env)\}(?P<close>[)\]]?)",
    re.DOTALL,
)


def _is_scalar_factor(f: str) -> bool:
    """Whether ``f`` can be a scalar written in front of a matrix: no sum, relation, list or matrix."""
    if re.search(r"[=,&<>]|\\\\|\\begin|\\end", f):
        return False
    depth = 0
    for i, c in enumerate(f):
        depth += c in "([{"
        depth -= c in ")]}"
        if i > 0 and depth == 0 and c in "+-":
            return False
    return True


def _as_matrix(s: str) -> tuple[str, list[list[str]]] | None:
    """``(factor, rows of entries)`` of ``c\\begin{pmatrix}a&b\\\\c&d\\end{pmatrix}``; None if ``s``
    is not one rectangular matrix. Any of matrix/pmatrix/bmatrix/Bmatrix/smallmatrix/array (in
    brackets or not); ``factor`` is ``""`` when there is none. A ``vmatrix`` (determinant) is not one.
    """
    if "\\begin" not in s or len(s) > 2000:
        return None
    m = _MATRIX.fullmatch(s)
    if not m or bool(m["open"]) != bool(m["close"]) or re.search(r"\\begin|\\end", m["body"]):
        return None
    factor = re.sub(r"\\(?:cdot|times)$", "", m["factor"])
    if not _is_scalar_factor(factor):
        return None
    rows = m["body"].replace("\\hline", "").split("\\\\")
    if len(rows) > 1 and not rows[-1].strip():
        rows.pop()  # a trailing row break
    entries = [row.split("&") for row in rows]
    if any(len(row) != len(entries[0]) for row in entries) or not all(e.strip() for r in entries for e in r):
        return None
    return factor, entries


def _scaled(factor: str, entry: str) -> str:
    """``factor`` times a matrix entry as a normalised answer (exact for simple numbers)."""
    entry = normalize_answer(entry)
    if factor in ("", "+"):
        return entry
    f = Fraction(-1) if factor == "-" else _to_fraction(normalize_answer(factor))
    e = _to_fraction(entry)
    if f is not None and e is not None:
        return str(f * e)
    return normalize_answer(f"-({entry})" if factor == "-" else f"{factor}\\cdot({entry})")


def _match_unordered(given: list[str], truth: list[str], deadline: float) -> bool:
    """Whether the elements pair off one to one as equivalent answers, in any order."""
    if len(given) != len(truth):
        return False
    left = [normalize_answer(b) for b in truth]
    for a in given:
        a = normalize_answer(a)
        hit = next((i for i, b in enumerate(left) if _equivalent(a, b, deadline)), None)
        if hit is None:
            return False
        left.pop(hit)
    return True


_BASED = re.compile(r"(?P<digits>[0-9A-Z]*[0-9][0-9A-Z]*)_\{?(?P<base>\d+)\}?")


def _based(s: str) -> tuple[str, int] | None:
    """``(digits, value)`` of a number written in a base (``1011_2``, ``A3_{11}``); None for anything else."""
    m = _BASED.fullmatch(s)
    if not m or len(s) > 100:
        return None
    digits, base = m.group("digits"), int(m.group("base"))
    if not 2 <= base <= 36:
        return None
    try:
        return digits, int(digits, base)
    except ValueError:  # a digit the base does not have
        return None


def _based_equal(given: str, truth: str) -> bool | None:
    """Numbers in a base: the same value when both name their base; against a plain integer, the same digits (the
    base left out, as the question gives it) or the same value. None (undecided here) when neither side is a based
    number, or the other side is neither those digits nor an integer."""
    bg, bt = _based(given), _based(truth)
    if bg is None and bt is None:
        return None
    if bg is not None and bt is not None:
        return bg[1] == bt[1]
    based, plain = (bg, truth) if bg is not None else (bt, given)
    assert based is not None
    if plain == based[0]:
        return True
    if not _INT.fullmatch(plain):
        return None
    return _int_eq(plain, str(based[1]))


def _equivalent(given: str, truth: str, deadline: float) -> bool:
    """Equivalence of two normalised answers, finishing before ``deadline`` (monotonic)."""
    if given == truth:
        return True
    if _INT.fullmatch(given) and _INT.fullmatch(truth):
        return _int_eq(given, truth)
    based = _based_equal(given, truth)
    if based is not None:  # sympy reads 1011_2 as a subscripted symbol and drops the base
        return based
    fg, ft = _to_fraction(given), _to_fraction(truth)
    if fg is not None and ft is not None:
        return fg == ft
    mg, mt = _as_matrix(given), _as_matrix(truth)
    if mg is not None or mt is not None:  # a matrix equals a matrix of its shape, entry by entry
        if mg is None or mt is None or len(mg[1]) != len(mt[1]) or len(mg[1][0]) != len(mt[1][0]):
            return False
        return all(_equivalent(_scaled(mg[0], a), _scaled(mt[0], b), deadline)
                   for row_g, row_t in zip(mg[1], mt[1]) for a, b in zip(row_g, row_t))
    ug, ut = _split_union(given), _split_union(truth)
    if ug is not None or ut is not None:  # unions: the same intervals (a set of them, any order)
        return ug is not None and ut is not None and _match_unordered(ug, ut, deadline)
    sg, st = _as_sequence(given), _as_sequence(truth)
    if sg is not None or st is not None:
        if sg is None or st is None or sg[0] != st[0] or len(sg[1]) != len(st[1]):
            return False
        if sg[0] != "set":  # tuples and intervals: ordered
            return all(_equivalent(normalize_answer(a), normalize_answer(b), deadline)
                       for a, b in zip(sg[1], st[1]))
        return _match_unordered(sg[1], st[1], deadline)  # lists and sets: in any order
    if re.fullmatch(r"[a-zA-Z ]{2,}", given) and re.fullmatch(r"[a-zA-Z ]{2,}", truth):
        return given.casefold() == truth.casefold()  # plain words: no need for sympy
    return _math_verify(given, truth, deadline - time.monotonic())


def grade_answer(given: str | None, truth: str | None, timeout: float = 2.0) -> bool:
    """Whether ``given`` is mathematically equivalent to ``truth``; never raises.

    ``timeout`` bounds the whole sympy/math-verify part in seconds (wall clock, enforced by
    killing the worker process); a comparison that runs out of time grades False.
    """
    try:
        if not isinstance(given, str) or not isinstance(truth, str):
            return False
        a, b = given.strip(), truth.strip()
        if _INT.fullmatch(a) and _INT.fullmatch(b):  # fast path: no normalisation at all
            return _int_eq(a, b)
        g, t = normalize_answer(a), normalize_answer(b)
        if not g or not t:
            return False
        if _INT.fullmatch(g) and _INT.fullmatch(t):
            return _int_eq(g, t)
        return _equivalent(g, t, time.monotonic() + timeout)
    except Exception:
        return False


# ------------------------------------------------------------------ math-verify worker
#
# The worker is a plain ``python -c`` subprocess speaking JSON lines over pipes, not a
# multiprocessing pool: "spawn"/"forkserver" re-import the parent's ``__main__`` (breaking
# scripts without a main guard, stdin and notebooks) and "fork" is unsafe in a parent with
# threads or CUDA. The worker imports only this module (stdlib at top level) and math-verify.

_PKG_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_WORKER_CODE = (
    "import sys; sys.path[0:1] = [{root!r}]; from prm.grading import _serve; _serve()"
)


def _verify_in_worker(given: str, truth: str) -> bool:
    from math_verify import parse, verify

    gold = parse(f"${truth}$", parsing_timeout=None)  # type: ignore[arg-type]
    pred = parse(f"${given}$", parsing_timeout=None)  # type: ignore[arg-type]
    if not gold or not pred:
        return False
    return bool(verify(gold, pred, timeout_seconds=None))


def _serve() -> None:
    """Worker loop: read ``[given, truth]`` JSON lines on stdin, answer ``1``/``0`` lines.

    On Linux the worker dies with the thread that started it (PR_SET_PDEATHSIG), so a killed
    parent leaves no runaway sympy process; a worker lost that way is restarted on next use.
    """
    if sys.platform.startswith("linux"):  # die with the parent even mid-computation
        try:
            import ctypes
            import signal

            ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        except Exception:
            pass
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints from libraries go to stderr, not into the protocol
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    import math_verify  # noqa: F401  (warm the imports before saying ready)

    out.write("ready\n")
    for line in sys.stdin:
        try:
            given, truth = json.loads(line)
            ok = _verify_in_worker(str(given), str(truth))
        except Exception:
            ok = False
        out.write("1\n" if ok else "0\n")


class _Worker:
    """One lazily started, reused math-verify process; killed and replaced on timeout."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.proc: subprocess.Popen[bytes] | None = None
        self.buf = b""
        self.ready = False
        self.pid = os.getpid()

    def _start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER_CODE.format(root=_PKG_ROOT)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True,
        )
        self.buf, self.ready = b"", False

    def kill(self) -> None:
        proc, self.proc, self.ready = self.proc, None, False
        if proc is None or self.pid != os.getpid():
            return
        try:
            proc.kill()
            proc.wait(timeout=1.0)
        except Exception:
            pass
        for f in (proc.stdin, proc.stdout):
            try:
                if f is not None:
                    f.close()
            except Exception:
                pass

    def _readline(self, timeout: float) -> bytes | None:
        """One reply line, or None when ``timeout`` passes or the worker dies."""
        assert self.proc is not None and self.proc.stdout is not None
        fd, deadline = self.proc.stdout.fileno(), time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def compare(self, given: str, truth: str, timeout: float) -> bool:
        with self.lock:
            if self.pid != os.getpid():  # we were forked: leave the parent's worker alone
                self.proc, self.ready, self.pid = None, False, os.getpid()
            try:
                if self.proc is None or self.proc.poll() is not None:
                    self.kill()
                    self._start()
                assert self.proc is not None and self.proc.stdin is not None
                if not self.ready:
                    if self._readline(_STARTUP_TIMEOUT) != b"ready":
                        raise RuntimeError("grading worker did not start")
                    self.ready = True
                self.proc.stdin.write(json.dumps([given, truth]).encode() + b"\n")
                self.proc.stdin.flush()
                reply = self._readline(timeout)
                if reply is not None:
                    return reply == b"1"
                self.kill()
                self._start()  # replace it now; it warms up while the caller moves on
                return False
            except Exception:
                self.kill()
                return False


_WORKER = _Worker()
atexit.register(_WORKER.kill)


def _math_verify(given: str, truth: str, timeout: float) -> bool:
    """math-verify equivalence of two normalised LaTeX strings under a hard time bound."""
    if timeout <= 0 or len(given) + len(truth) > _MAX_VERIFY_CHARS:
        return False
    return _WORKER.compare(given, truth, timeout)
