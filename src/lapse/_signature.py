"""Wrappers that take the wrapped function's own parameters instead of ``*args, **kwargs``.

A wrapper declared ``(*args, **kwargs)`` that calls ``fn(*args, **kwargs)`` makes
a tuple and two dicts on every call and takes CPython's slow generic call path:
about 75 ns a call more than a wrapper declared ``(x)`` that calls ``fn(x)`` (the
two floors of ``benchmarks/overhead.py``), a third of what ``minimal`` adds.

So the sync hot path is written once, as ordinary code (``_hotpath._wrap_sync``,
whose inner ``timed_function(*args, **kwargs)`` calls ``fn(*args, **kwargs)``),
and for each shape of parameter list this module recompiles that source with the
function's parameters in both places. Everything else in the generated code is
the template's, line for line: tracebacks point at the template's lines in
``_hotpath.py``. The rebuilt factory is cached per parameter shape (compiling one
takes about 2 ms, section 5 of the benchmark), so a module of functions taking
``(self, X)`` compiles it once.

Defaults are not copied into the source: the generated wrapper gets the
function's own ``__defaults__`` and ``__kwdefaults__`` tuples, the very objects,
so an omitted argument reaches the function as it would without lapse. A call
whose arguments do not fit raises the function's own ``TypeError`` (the wrapper
carries its name) before anything is timed.

A parameter named like a name of the template (``key``, ``level``, ``type``...)
is handled by renaming the template's name (``_lapse_key``); a global or builtin
renamed so is bound once in the factory. Where the function is not a plain
Python function (a builtin, a ``functools.partial``, a callable object), its
parameter names start with ``_lapse_``, or the template's source cannot be read (a
frozen application) or no longer compiles to the running code (the file changed on
disk since import), ``with_parameters_of`` returns None and the caller keeps
the ``*args, **kwargs`` wrapper, which behaves the same, a little slower.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import CodeType, FunctionType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import ast

INNER = "timed_function"
"""The name of the wrapper defined inside a template factory."""
PREFIX = "_lapse_"

Shape = tuple[tuple[str, ...], tuple[str, ...], int, str | None, tuple[str, ...],
              tuple[bool, ...], str | None]
"""(positional-only, positional-or-keyword, defaults, *name, keyword-only,
keyword-only has default, **name): what the generated source depends on."""


def shape_of(fn: Callable[..., Any]) -> Shape | None:
    """The parameter shape of a plain Python function, read from its code (not from
    ``__wrapped__`` or ``__signature__``, which may describe some other function)."""
    from inspect import CO_VARARGS, CO_VARKEYWORDS  # already imported by the decorator

    if type(fn) is not FunctionType:
        return None
    code: CodeType = fn.__code__
    names = code.co_varnames  # positional, keyword-only, *name, **name, then locals
    positional, keyword_only = code.co_argcount, code.co_kwonlyargcount
    count = positional + keyword_only
    star = names[count] if code.co_flags & CO_VARARGS else None
    count += star is not None
    double_star = names[count] if code.co_flags & CO_VARKEYWORDS else None
    count += double_star is not None
    if any(name.startswith(PREFIX) for name in names[:count]):
        return None
    kw_names = names[positional:positional + keyword_only]
    kwdefaults = fn.__kwdefaults__ or {}
    return (names[:code.co_posonlyargcount], names[code.co_posonlyargcount:positional],
            len(fn.__defaults__ or ()), star, kw_names,
            tuple(name in kwdefaults for name in kw_names), double_star)


def with_parameters_of(
    template: Callable[..., Callable[..., Any]], fn: Callable[..., Any]
) -> Callable[..., Any] | None:
    """``template(*rest)`` rebuilt so its inner wrapper takes ``fn``'s parameters.

    Returns a function that, called like ``template``, returns the wrapper with
    ``fn``'s defaults in place; None where that cannot be done (see the module).
    """
    shape = shape_of(fn)
    if shape is None:
        return None
    factory = _factory(template, shape)
    if factory is None:
        return None

    def make(*rest: Any) -> Callable[..., Any]:
        wrapper = factory(*rest)
        wrapper.__defaults__ = fn.__defaults__
        wrapper.__kwdefaults__ = fn.__kwdefaults__
        return wrapper

    return make


@functools.lru_cache(maxsize=256)
def _factory(
    template: Callable[..., Callable[..., Any]], shape: Shape
) -> Callable[..., Callable[..., Any]] | None:
    """The template recompiled for one parameter shape (None if its source is not readable,
    or no longer the code that runs)."""
    import ast

    source = _template_source(template)
    if source is None:
        return None
    try:
        return _compiled(template, _rebuilt(ast.parse(source), shape, _template_locals(template)))
    except Exception:  # noqa: BLE001 - decorating must not fail: the generic wrapper works
        return None


def _compiled(
    template: Callable[..., Callable[..., Any]], tree: ast.Module | str
) -> Callable[..., Callable[..., Any]]:
    """The factory a (changed) copy of the template's source defines, in the template's
    module namespace."""
    import __future__

    code = compile(tree, template.__code__.co_filename, "exec",
                   flags=__future__.annotations.compiler_flag, dont_inherit=True)
    namespace: dict[str, Any] = {}
    exec(code, template.__globals__, namespace)  # noqa: S102 - our own source, recompiled
    factory: Callable[..., Callable[..., Any]] = namespace[template.__name__]
    return factory


@functools.lru_cache(maxsize=8)
def _template_source(template: Callable[..., Callable[..., Any]]) -> str | None:
    """The template's source, after blank lines that keep its line numbers in the file.

    None when it cannot be read, or when it no longer compiles to the template's own
    code (the file changed on disk since it was imported, as during an upgrade).
    """
    import inspect

    try:
        source = "\n" * (template.__code__.co_firstlineno - 1) + inspect.getsource(template)
        current = _fingerprint(_compiled(template, source).__code__) == _fingerprint(
            template.__code__)
    except Exception:  # noqa: BLE001 - decorating must not fail: the generic wrapper works
        return None
    return source if current else None


def _fingerprint(code: CodeType) -> tuple[Any, ...]:
    """What a stale source would change in a code object and its nested ones: names and
    lines (not the bytecode, which the compiler emits a little differently for a lone
    function than for the same function in its module)."""
    nested = tuple(_fingerprint(const) for const in code.co_consts if isinstance(const, CodeType))
    lines = frozenset(line for _, _, line in code.co_lines())
    return (code.co_name, code.co_names, code.co_varnames, code.co_cellvars, code.co_freevars,
            code.co_firstlineno, lines, nested)


def _template_locals(template: Callable[..., Any]) -> frozenset[str]:
    """Names bound inside the template or its inner wrapper (parameters, locals, cells)."""
    code = template.__code__
    inner = next(const for const in code.co_consts
                 if isinstance(const, CodeType) and const.co_name == INNER)
    return frozenset((*code.co_varnames, *code.co_cellvars, *inner.co_varnames))


def _rebuilt(tree: ast.Module, shape: Shape, local_names: frozenset[str]) -> ast.Module:
    """The template's tree, changed in place to give the inner wrapper ``shape``'s parameters."""
    import ast

    posonly, plain, defaults, star, kw_only, kw_has_default, double_star = shape
    parameters = {*posonly, *plain, *kw_only, *(name for name in (star, double_star) if name)}
    (factory,) = tree.body
    assert isinstance(factory, ast.FunctionDef)
    nodes = list(ast.walk(factory))
    (inner,) = (node for node in nodes if isinstance(node, ast.FunctionDef) and node.name == INNER)
    # The template's own names that a parameter would shadow get the prefix wherever
    # they are bound or read; a global or builtin renamed so is bound once at the top of
    # the factory.
    used = {node.id for node in nodes if isinstance(node, ast.Name)}
    clashes = parameters & used
    for node in nodes:
        if isinstance(node, ast.Name) and node.id in clashes:
            node.id = PREFIX + node.id
        elif isinstance(node, ast.arg) and node.arg in clashes:
            node.arg = PREFIX + node.arg
        elif isinstance(node, ast.FunctionDef | ast.ExceptHandler) and node.name in clashes:
            node.name = PREFIX + node.name
        elif isinstance(node, ast.Global | ast.Nonlocal):
            node.names = [PREFIX + name if name in clashes else name for name in node.names]
    start = int(ast.get_docstring(factory) is not None)
    factory.body[start:start] = [
        ast.Assign(targets=[ast.Name(PREFIX + name, ast.Store())], value=ast.Name(name, ast.Load()),
                   lineno=factory.lineno)
        for name in sorted(clashes - local_names)
    ]
    inner.args = ast.arguments(
        posonlyargs=[ast.arg(name) for name in posonly],
        args=[ast.arg(name) for name in plain],
        vararg=ast.arg(star) if star else None,
        kwonlyargs=[ast.arg(name) for name in kw_only],
        kw_defaults=[ast.Constant(None) if has else None for has in kw_has_default],
        kwarg=ast.arg(double_star) if double_star else None,
        defaults=[ast.Constant(None) for _ in range(defaults)],
    )
    inner.returns = None
    call_args: list[ast.expr] = [ast.Name(name, ast.Load()) for name in (*posonly, *plain)]
    if star:
        call_args.append(ast.Starred(ast.Name(star, ast.Load()), ast.Load()))
    keywords = [ast.keyword(name, ast.Name(name, ast.Load())) for name in kw_only]
    if double_star:
        keywords.append(ast.keyword(None, ast.Name(double_star, ast.Load())))
    for node in nodes:
        if isinstance(node, ast.Call) and _is_pass_through(node):
            node.args, node.keywords = call_args, keywords
    return ast.fix_missing_locations(tree)


def _is_pass_through(call: ast.Call) -> bool:
    """Whether ``call`` is the template's ``fn(*args, **kwargs)``."""
    import ast

    return (isinstance(call.func, ast.Name) and call.func.id in {"fn", PREFIX + "fn"}
            and len(call.args) == 1 and isinstance(call.args[0], ast.Starred)
            and len(call.keywords) == 1 and call.keywords[0].arg is None)
