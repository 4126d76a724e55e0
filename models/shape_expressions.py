"""Shape expressions in a ``torch.export`` program (``expr_str`` in ``models/*.json``), checked
before torch hands them to ``sympy.sympify``, which evaluates the string as Python.

Only what sympy's own ``srepr`` prints for the shapes torch records passes, within bounds that
keep sympy's eager arithmetic cheap; anything else is refused with what made the decision.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

# What sympy's srepr prints for the shapes torch.export records: constructors, and the functions
# torch's deserializer registers, called with literals, keyword assumptions and one another. No
# operators, attribute access, subscripts or builtins: nothing in this grammar can reach eval,
# open or __import__. sympify evaluates what it parses at once, in C, holding the GIL: powers
# and shifts of big integers would freeze the process (nothing, not SIGTERM, stops them), so
# literals are short, shifts are refused, and a power is only a bounded power of something
# holding no power.
# fmt: off
_SYMPY_NAMES = frozenset({
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Mod", "Max", "Min", "Abs", "floor", "ceiling",
    "sqrt", "Piecewise", "ExprCondPair", "Equality", "Unequality", "StrictLessThan", "LessThan",
    "StrictGreaterThan", "GreaterThan", "And", "Or", "Not", "Tuple", "true", "false", "BooleanTrue", "BooleanFalse",
    "oo", "zoo", "nan", "int_oo", "Infinity", "NegativeInfinity", "Half", "One", "Zero", "NegativeOne", "FloorDiv",
    "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv", "FloatTrueDiv",
    "IntTrueDiv", "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal",
    "ToFloat", "Identity", "True", "False", "None",
})
_KEYWORDS = frozenset({
    "positive", "negative", "nonnegative", "nonpositive", "integer", "real", "finite", "infinite", "zero",
    "nonzero", "even", "odd", "rational", "commutative", "evaluate", "precision",
})
# fmt: on
_POWERS = frozenset({"Pow", "PowByNatural", "FloatPow"})  # srepr prints torch's PowByNatural as Pow
_CONSTANTS = frozenset({"True", "False", "None", "true", "false"})  # what an assumption may be set to
MAX_EXPRESSION_CHARS = 4096  # a 12-layer transformer with two dynamic dimensions: 106 at most
MAX_EXPRESSION_DEPTH = 32  # calls within calls; the same transformer: 3
MAX_DIGITS = 20  # an integer literal or hint: int64 needs 19
MAX_EXPONENT = 16  # Pow(Symbol('s0', ...), Integer(2)) is what a seq * seq shape records
MAX_PRECISION = 1024  # bits of a Float; srepr prints 53
_EXPR_TOKEN = re.compile(r" *(?:(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<int>[0-9]+)|'(?P<str>[^']*)'|(?P<op>[-(),=]))")
# What srepr quotes: a symbol's name, or a Float's decimal digits with a small exponent (a Float
# of 1e999999999999 costs nothing until something turns it into an integer).
_EXPR_STRING = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}|-?[0-9]{1,20}(\.[0-9]{0,20})?(e[+-]?[0-9]{1,3})?")


def expressions(node: Any) -> Iterator[tuple[Any, Any]]:
    """Every ``expr_str`` value in the serialized program, however deep, with its hint."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "expr_str" in item:
                yield item["expr_str"], item.get("hint")
            stack.extend(value for key, value in item.items() if key != "expr_str")
        elif isinstance(item, list):
            stack.extend(item)


class _Refused(Exception):
    """Why a shape expression is refused: ``python`` when sympy would run what is not srepr's notation."""

    def __init__(self, why: str, python: bool = False) -> None:
        super().__init__(why)
        self.python = python


def check_expression(expr: Any, hint: Any, refuse: Any) -> None:
    if not isinstance(expr, str):
        raise refuse(f"holds a shape expression that is not a string: {expr!r:.80}")
    shown = repr(expr[:80]) + ("..." if len(expr) > 80 else "")
    try:
        if len(expr) > MAX_EXPRESSION_CHARS:
            raise _Refused(f"{len(expr)} characters, over {MAX_EXPRESSION_CHARS}")
        if isinstance(hint, dict) and _too_long(hint.get("as_int")):
            raise _Refused(f"a hint of over {MAX_DIGITS} digits")
        tokens = _tokens(expr)
        tree, end = _parse(tokens, 0, 0)
        if end != len(tokens):
            raise _Refused(repr(tokens[end][1]), python=True)
        _check_tree(tree)
    except _Refused as exc:
        if exc.python:
            raise refuse(f"holds a shape expression sympy would evaluate as Python ({exc} in {shown})") from None
        raise refuse(f"holds a shape expression too costly for sympy to evaluate ({exc} in {shown})") from None


def _too_long(value: Any) -> bool:
    return isinstance(value, int) and len(str(abs(value))) > MAX_DIGITS


def _tokens(expr: str) -> list[tuple[str, str]]:
    tokens, position = [], 0
    while position < len(expr):
        match = _EXPR_TOKEN.match(expr, position)
        if match is None or match.end() == position:
            raise _Refused(repr(expr[position : position + 20].lstrip(" ")), python=True)
        kind = match.lastgroup or "end"
        value = match.group(kind) if match.lastgroup else ""
        if kind == "int" and len(value) > MAX_DIGITS:
            raise _Refused(f"an integer of {len(value)} digits, over {MAX_DIGITS}")
        if kind == "str" and not _EXPR_STRING.fullmatch(value):
            raise _Refused(f"the string {value[:30]!r}, neither a symbol's name nor a short decimal")
        if kind == "name" and value not in _SYMPY_NAMES | _KEYWORDS | _POWERS:
            raise _Refused(repr(value), python=True)
        if match.lastgroup:
            tokens.append((kind, value))
        position = match.end()
    return tokens


# A parsed expression: ("int", "7"), ("str", "s0"), ("name", "oo"), ("neg", node), or
# ("call", name, [positional nodes], {keyword: node}).
_Node = tuple[Any, ...]


def _parse(tokens: list[tuple[str, str]], at: int, depth: int) -> tuple[_Node, int]:
    """srepr's notation: literals, names, and calls of names, with keyword arguments."""

    def expect(position: int, value: str) -> int:
        if position >= len(tokens) or tokens[position] != ("op", value):
            found = tokens[position][1] if position < len(tokens) else "the end"
            raise _Refused(f"{found!r} where {value!r} belongs", python=True)
        return position + 1

    if depth > MAX_EXPRESSION_DEPTH:
        raise _Refused(f"calls nested over {MAX_EXPRESSION_DEPTH} deep")
    if at >= len(tokens):
        raise _Refused("an expression cut short", python=True)
    kind, value = tokens[at]
    if (kind, value) == ("op", "-"):
        node, at = _parse(tokens, at + 1, depth + 1)
        return ("neg", node), at
    if kind in ("int", "str"):
        return (kind, value), at + 1
    if kind != "name":
        raise _Refused(repr(value), python=True)
    if at + 1 >= len(tokens) or tokens[at + 1] != ("op", "("):
        return ("name", value), at + 1
    args: list[_Node] = []
    keywords: dict[str, _Node] = {}
    at += 2
    while tokens[at : at + 1] != [("op", ")")]:
        if args or keywords:
            at = expect(at, ",")
        if tokens[at + 1 : at + 2] == [("op", "=")] and tokens[at][0] == "name":
            keyword = tokens[at][1]
            keywords[keyword], at = _parse(tokens, at + 2, depth + 1)
        else:
            node, at = _parse(tokens, at, depth + 1)
            args.append(node)
    return ("call", value, args, keywords), expect(at, ")")


def _check_tree(node: _Node) -> None:
    kind = node[0]
    if kind == "neg":
        _check_tree(node[1])
    elif kind == "name" and node[1] not in _SYMPY_NAMES:
        raise _Refused(repr(node[1]), python=True)
    elif kind == "call":
        _, name, args, keywords = node
        if name in _KEYWORDS:
            raise _Refused(repr(name), python=True)
        for keyword, value in keywords.items():
            if keyword not in _KEYWORDS:
                raise _Refused(repr(keyword), python=True)
            if keyword == "precision":
                if value[0] != "int" or int(value[1]) > MAX_PRECISION:
                    raise _Refused(f"a precision other than a number up to {MAX_PRECISION}")
            elif value[0] != "name" or value[1] not in _CONSTANTS:
                raise _Refused(f"{keyword} set to something other than True or False")
        if name in _POWERS:
            _check_power(name, args, keywords)
        for arg in args:
            _check_tree(arg)


def _check_power(name: str, args: list[_Node], keywords: dict[str, _Node]) -> None:
    """A power of something holding no power, to a literal exponent of at most ``MAX_EXPONENT``:
    sympify computes powers of integers at once, and powers of powers multiply their exponents."""
    if len(args) != 2 or keywords:
        raise _Refused(f"{name} with other than a base and an exponent")
    base, exponent = args
    if _holds_power(base):
        raise _Refused(f"{name} of a power")
    if not _small_literal(exponent):
        raise _Refused(f"{name} to an exponent other than a number up to {MAX_EXPONENT}")


def _holds_power(node: _Node) -> bool:
    if node[0] == "neg":
        return _holds_power(node[1])
    return node[0] == "call" and (node[1] in _POWERS or any(_holds_power(arg) for arg in node[2]))


def _small_literal(node: _Node) -> bool:
    """``Integer(k)``, ``Rational(p, q)`` or ``Float('x')`` with every number at most ``MAX_EXPONENT``."""
    if node[0] != "call" or node[1] not in ("Integer", "Rational", "Float") or not node[2]:
        return False
    numbers = [arg[1] if arg[0] != "neg" else arg[1][1] for arg in node[2]]
    try:
        return all(abs(float(number)) <= MAX_EXPONENT for number in numbers)
    except (TypeError, ValueError):
        return False
