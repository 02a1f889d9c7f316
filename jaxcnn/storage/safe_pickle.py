"""A pickle reader that interprets opcodes itself and never calls a constructor named by the file.

Python's unpickler (even with ``find_class`` restricted) hands the file's arguments to real callables:
``numpy.dtype(...)``'s ``__setstate__`` accepts flags that turn raw file bytes into object pointers, which
crashes (or worse) the reading process. This reader instead walks the opcodes of protocols 2-5 and builds
only plain values: ``None``, bools, ints, floats, bytes, str, lists, tuples, dicts, and NumPy arrays of a
whitelisted numeric dtype made with ``np.frombuffer`` from bytes of exactly the right length. The NumPy
reconstruction recipes (``_reconstruct`` + ``ndarray`` + ``dtype`` state, protocol 5's ``_frombuffer``,
``scalar``) and Python 3's ``_codecs.encode(text, 'latin1')`` for bytes are recognised by name and decoded
here; every other global is refused. Nothing it builds is larger than the file itself (arrays view the
bytes read from it), so a crafted file can ask for no more memory than its own size.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

__all__ = ["NUMERIC_DTYPES", "PickleRefused", "loads"]

# dtype codes (kind + item size) an array or scalar may have; no object, string, void, datetime or complex
NUMERIC_DTYPES = frozenset({"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8"})
_MAX_NDIM = 32  # NumPy's own limit is 64; no data file needs more


class PickleRefused(ValueError):
    """The bytes are not a pickle of plain data and numeric arrays (``refused_global`` names a refused global)."""

    def __init__(self, message: str, refused_global: str | None = None):
        super().__init__(message)
        self.refused_global = refused_global


class _Stub:
    """A value that exists only while reading (a global, a dtype, an array before its data); never returned."""


class _Global(_Stub):
    def __init__(self, name: str):
        self.name = name


class _DType(_Stub):
    def __init__(self, code: str):
        self.code, self.order = code, "="

    def dtype(self) -> np.dtype:
        order = "=" if self.order == "|" else self.order
        return np.dtype(order + self.code)


class _Array(_Stub):
    """``_reconstruct(ndarray, (0,), 'b')``: an empty array waiting for BUILD to give it shape, dtype and bytes."""

    def __init__(self) -> None:
        self.value: np.ndarray | None = None


class _Tuple(_Stub):
    """A tuple holding stubs: only ever an argument of REDUCE or BUILD."""

    def __init__(self, items: tuple[Any, ...]):
        self.items = items


_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric", "numpy._core.numeric")
_GLOBALS = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"), ("__builtin__", "bytes"),
            ("builtins", "bytes")} | {
    (m, n) for m in _NUMPY_MODULES for n in ("_reconstruct", "scalar", "_frombuffer")}


def _plain(v: Any, what: str) -> Any:
    """``v`` as a value that may go into a container or be returned: built arrays unwrapped, other stubs refused."""
    if isinstance(v, _Array) and v.value is not None:
        return v.value
    if isinstance(v, _Stub):
        kind = v.name if isinstance(v, _Global) else type(v).__name__.strip("_").lower()
        raise PickleRefused(f"{what} is not plain data (a {kind})")
    return v


def _items(v: Any, what: str) -> tuple[Any, ...]:
    """The items of a tuple argument (stubs allowed inside)."""
    if isinstance(v, _Tuple):
        return v.items
    if isinstance(v, tuple):
        return v
    raise PickleRefused(f"{what} must be a tuple, got {type(v).__name__}")


def _text(v: Any, what: str, limit: int = 16) -> str:
    """A short str argument (Python 2 pickles give bytes)."""
    if isinstance(v, (bytes, str)) and len(v) > limit:
        raise PickleRefused(f"{what} is {len(v):,} characters long, expected at most {limit}")
    if isinstance(v, bytes):
        return v.decode("latin1")
    if isinstance(v, str):
        return v
    raise PickleRefused(f"{what} must be a string, got {type(v).__name__}")


def _int(v: Any, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise PickleRefused(f"{what} must be an int, got {type(v).__name__}")
    return v


def _dtype_of(v: Any, what: str) -> np.dtype:
    if not isinstance(v, _DType):
        raise PickleRefused(f"{what} must be a numpy dtype, got {type(v).__name__}")
    return v.dtype()


def _make_dtype(args: tuple[Any, ...]) -> _DType:
    if not 1 <= len(args) <= 3:
        raise PickleRefused(f"numpy.dtype takes 1 to 3 arguments, got {len(args)}")
    code = _text(args[0], "the dtype code")
    if code not in NUMERIC_DTYPES:
        allowed = ", ".join(sorted(NUMERIC_DTYPES))
        raise PickleRefused(f"dtype {code!r} is not a plain numeric type (allowed: {allowed})")
    return _DType(code)


def _dtype_state(d: _DType, state: Any) -> None:
    """Apply a dtype's pickled state: only its byte order is used; structure, fields and flags must be absent."""
    s = _items(state, "the dtype state")
    if len(s) not in (8, 9) or s[0] not in (3, 4):
        raise PickleRefused(f"unexpected numpy dtype state of {len(s)} items")
    order = _text(s[1], "the dtype byte order")
    if order not in ("<", ">", "|", "="):
        raise PickleRefused(f"dtype byte order {order!r} is not one of < > | =")
    if s[2] is not None or s[3] is not None or s[4] is not None:
        raise PickleRefused("structured or sub-array dtypes are not plain numeric types")
    if _int(s[5], "the dtype item size") not in (-1, int(d.code[1])) or _int(s[7], "the dtype flags") != 0:
        raise PickleRefused(f"dtype state (item size {s[5]}, flags {s[7]}) does not match a plain {d.code}")
    if len(s) == 9 and s[8] is not None:
        raise PickleRefused("dtype metadata is not plain data")
    d.order = order


def _array(raw: Any, dtype: np.dtype, shape_v: Any, fortran: bool) -> np.ndarray:
    """``np.frombuffer`` of exactly prod(shape) items; a wrong length is an error, never a partial read."""
    if not isinstance(raw, bytes):
        raise PickleRefused(f"array data must be bytes, got {type(raw).__name__}")
    shape = tuple(_int(d, "an array dimension") for d in _items(shape_v, "the array shape"))
    if len(shape) > _MAX_NDIM or any(d < 0 for d in shape):
        raise PickleRefused(f"array shape {shape[:8]} is not a valid shape")
    count = 1
    for d in shape:
        count *= d  # Python ints: no overflow, and bounded below by the check that follows
    if count * dtype.itemsize != len(raw):
        raise PickleRefused(f"array of shape {shape} {dtype} needs {count * dtype.itemsize:,} bytes, "
                            f"the file gives {len(raw):,}")
    flat = np.frombuffer(raw, dtype=dtype)  # a view of the file's bytes: no copy, however often it is named
    return flat.reshape(shape, order="F" if fortran else "C")


def _array_state(a: _Array, state: Any) -> None:
    s = _items(state, "the array state")
    if len(s) == 5:
        _int(s[0], "the array state version")
        s = s[1:]
    if len(s) != 4:
        raise PickleRefused(f"unexpected numpy array state of {len(s)} items")
    shape, dtype, fortran, raw = s
    if not isinstance(fortran, (bool, int)):
        raise PickleRefused("array order flag must be a bool")
    a.value = _array(raw, _dtype_of(dtype, "the array dtype"), shape, bool(fortran))


def _reduce(func: Any, args_v: Any, encoded: dict[int, tuple[str, bytes]]) -> Any:
    if not isinstance(func, _Global):
        raise PickleRefused(f"REDUCE on a {type(func).__name__}, not a known global")
    args = _items(args_v, f"the arguments of {func.name}")
    name = func.name.rsplit(".", 1)[-1]
    if func.name == "numpy.dtype":
        return _make_dtype(args)
    if func.name == "_codecs.encode":
        if len(args) != 2 or not isinstance(args[0], str) or _text(args[1], "the encoding").lower().replace(
                "_", "-") not in ("latin1", "latin-1"):
            raise PickleRefused("_codecs.encode is only allowed as encode(text, 'latin1'), how Python 3 pickles bytes")
        text = args[0]
        if id(text) not in encoded:  # one bytes object per text, so naming it again allocates nothing
            try:
                encoded[id(text)] = (text, text.encode("latin1"))
            except UnicodeEncodeError:
                raise PickleRefused("_codecs.encode: the text is not latin1") from None
        return encoded[id(text)][1]
    if name == "bytes":
        if args:
            raise PickleRefused("bytes(...) is only allowed without arguments, how Python 3 pickles b''")
        return b""
    if name == "_reconstruct":
        if len(args) != 3 or not (isinstance(args[0], _Global) and args[0].name == "numpy.ndarray"):
            raise PickleRefused("_reconstruct may only rebuild a plain numpy.ndarray")
        return _Array()
    if name == "_frombuffer":
        if len(args) != 4:
            raise PickleRefused(f"_frombuffer takes 4 arguments, got {len(args)}")
        order = _text(args[3], "the array order")
        if order not in ("C", "F"):
            raise PickleRefused(f"array order {order!r} is not C or F")
        return _array(args[0], _dtype_of(args[1], "the array dtype"), args[2], order == "F")
    if name == "scalar":
        if len(args) != 2:
            raise PickleRefused(f"numpy scalar takes 2 arguments, got {len(args)}")
        return _array(args[1], _dtype_of(args[0], "the scalar dtype"), (), False)[()]
    raise PickleRefused(f"{func.name} cannot be called")  # numpy.ndarray itself is only an argument


def _build(obj: Any, state: Any) -> None:
    if isinstance(obj, _DType):
        _dtype_state(obj, state)
    elif isinstance(obj, _Array) and obj.value is None:
        _array_state(obj, state)
    else:
        raise PickleRefused(f"BUILD (setting object state) on a {type(obj).__name__} is not allowed")


class _Reader:
    """The opcode loop: a stack, a mark stack and a memo, as pickle's own virtual machine keeps them."""

    def __init__(self, data: bytes):
        self.raw = data
        self.data = memoryview(data)
        self.pos = 0
        self.stack: list[Any] = []
        self.marks: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        self.encoded: dict[int, tuple[str, bytes]] = {}  # id(text) -> (text kept alive, its latin1 bytes)

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise PickleRefused(f"truncated: needs {n:,} more bytes at offset {self.pos:,}, "
                                f"the file has {len(self.data) - self.pos:,}")
        out = bytes(self.data[self.pos:self.pos + n])
        self.pos += n
        return out

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def pop(self) -> Any:
        if not self.stack:
            raise PickleRefused("stack underflow: the pickle is corrupt")
        return self.stack.pop()

    def pop_mark(self) -> list[Any]:
        if not self.marks:
            raise PickleRefused("no MARK to pop: the pickle is corrupt")
        items, self.stack = self.stack, self.marks.pop()
        return items

    def top(self) -> Any:
        if not self.stack:
            raise PickleRefused("stack underflow: the pickle is corrupt")
        return self.stack[-1]

    def get(self, key: int) -> None:
        if key not in self.memo:
            raise PickleRefused(f"memo entry {key} is used before it is stored")
        self.stack.append(self.memo[key])

    def tuple(self, items: list[Any]) -> None:
        t = tuple(v.value if isinstance(v, _Array) and v.value is not None else v for v in items)
        self.stack.append(_Tuple(t) if any(isinstance(v, _Stub) for v in t) else t)

    def set_items(self, d: Any, items: list[Any]) -> None:
        if not isinstance(d, dict) or len(items) % 2:
            raise PickleRefused("SETITEMS needs a dict and key/value pairs")
        for k, v in zip(items[::2], items[1::2], strict=True):
            try:
                d[_plain(k, "a dict key")] = _plain(v, "a dict value")
            except TypeError:
                raise PickleRefused(f"dict key of type {type(k).__name__} is not hashable") from None

    def append(self, lst: Any, items: list[Any]) -> None:
        if not isinstance(lst, list):
            raise PickleRefused(f"APPEND needs a list, got {type(lst).__name__}")
        lst.extend(_plain(v, "a list item") for v in items)

    def run(self) -> Any:  # noqa: C901  (one branch per opcode reads best as a flat dispatch)
        stack = self.stack
        while True:
            op = self.take(1)
            if op == b"\x80":  # PROTO
                proto = self.take(1)[0]
                if not 2 <= proto <= 5:
                    raise PickleRefused(f"pickle protocol {proto} is not supported (2 to 5 are)")
            elif op == b"\x95":  # FRAME: a length hint only
                self.unpack("<Q")
            elif op == b".":  # STOP
                if len(self.stack) != 1 or self.marks:
                    raise PickleRefused("the pickle ends with a malformed stack")
                return _plain(self.stack[0], "the pickled value")
            elif op == b"(":  # MARK
                self.marks.append(self.stack)
                self.stack = stack = []
            elif op == b"N":
                stack.append(None)
            elif op == b"\x88":
                stack.append(True)
            elif op == b"\x89":
                stack.append(False)
            elif op == b"J":  # BININT
                stack.append(self.unpack("<i"))
            elif op == b"K":  # BININT1
                stack.append(self.take(1)[0])
            elif op == b"M":  # BININT2
                stack.append(self.unpack("<H"))
            elif op in (b"\x8a", b"\x8b"):  # LONG1, LONG4
                n = self.take(1)[0] if op == b"\x8a" else self.unpack("<i")
                if n > 64:  # no data label or size needs more than 512 bits; refuse quadratic-time huge ints
                    raise PickleRefused(f"integer of {n:,} bytes is too large")
                stack.append(int.from_bytes(self.take(n), "little", signed=True))
            elif op == b"G":  # BINFLOAT
                stack.append(self.unpack(">d"))
            elif op in (b"U", b"T"):  # SHORT_BINSTRING, BINSTRING: Python 2 str, read as bytes
                stack.append(self.take(self.take(1)[0] if op == b"U" else self.unpack("<i")))
            elif op in (b"C", b"B", b"\x8e", b"\x96"):  # SHORT_BINBYTES, BINBYTES, BINBYTES8, BYTEARRAY8
                n = {b"C": lambda: self.take(1)[0], b"B": lambda: self.unpack("<I")}.get(
                    op, lambda: self.unpack("<Q"))()
                stack.append(self.take(n))
            elif op in (b"\x8c", b"X", b"\x8d"):  # SHORT_BINUNICODE, BINUNICODE, BINUNICODE8
                n = self.take(1)[0] if op == b"\x8c" else self.unpack("<I" if op == b"X" else "<Q")
                try:
                    stack.append(self.take(n).decode("utf-8", "surrogatepass"))
                except UnicodeDecodeError:
                    raise PickleRefused("a string is not valid UTF-8") from None
            elif op == b")":
                stack.append(())
            elif op == b"]":
                stack.append([])
            elif op == b"}":
                stack.append({})
            elif op == b"t":  # TUPLE
                items = self.pop_mark()
                stack = self.stack
                self.tuple(items)
            elif op in (b"\x85", b"\x86", b"\x87"):  # TUPLE1-3
                n = op[0] - 0x84
                if len(stack) < n:
                    raise PickleRefused("stack underflow: the pickle is corrupt")
                items = stack[-n:]
                del stack[-n:]
                self.tuple(items)
            elif op == b"l":  # LIST
                items = self.pop_mark()
                stack = self.stack
                lst: list[Any] = []
                self.append(lst, items)
                stack.append(lst)
            elif op == b"d":  # DICT
                items = self.pop_mark()
                stack = self.stack
                d: dict[Any, Any] = {}
                self.set_items(d, items)
                stack.append(d)
            elif op == b"a":  # APPEND
                v = self.pop()
                self.append(self.top(), [v])
            elif op == b"e":  # APPENDS
                items = self.pop_mark()
                stack = self.stack
                self.append(self.top(), items)
            elif op == b"s":  # SETITEM
                v = self.pop()
                k = self.pop()
                self.set_items(self.top(), [k, v])
            elif op == b"u":  # SETITEMS
                items = self.pop_mark()
                stack = self.stack
                self.set_items(self.top(), items)
            elif op == b"q":  # BINPUT
                self.memo[self.take(1)[0]] = self.top()
            elif op == b"r":  # LONG_BINPUT
                self.memo[self.unpack("<I")] = self.top()
            elif op == b"\x94":  # MEMOIZE
                self.memo[len(self.memo)] = self.top()
            elif op == b"h":  # BINGET
                self.get(self.take(1)[0])
            elif op == b"j":  # LONG_BINGET
                self.get(self.unpack("<I"))
            elif op == b"0":  # POP
                self.pop()
            elif op == b"1":  # POP_MARK
                self.pop_mark()
                stack = self.stack
            elif op == b"2":  # DUP
                stack.append(self.top())
            elif op in (b"c", b"\x93"):  # GLOBAL, STACK_GLOBAL
                if op == b"c":
                    module, name = (self._line(), self._line())
                else:
                    name, module = self.pop(), self.pop()
                    if not isinstance(module, str) or not isinstance(name, str):
                        raise PickleRefused("STACK_GLOBAL needs two strings")
                if (module, name) not in _GLOBALS:
                    raise PickleRefused(f"refusing to unpickle {module}.{name}", refused_global=f"{module}.{name}")
                stack.append(_Global(f"{module}.{name}"))
            elif op == b"R":  # REDUCE
                args = self.pop()
                func = self.pop()
                stack.append(_reduce(func, args, self.encoded))
            elif op == b"b":  # BUILD
                state = self.pop()
                _build(self.top(), state)
            else:
                raise PickleRefused(f"pickle opcode {op!r} at offset {self.pos - 1:,} is not one plain data "
                                    f"needs (re-save with pickle protocol 2 or later)")

    def _line(self) -> str:
        end = self.raw.find(b"\n", self.pos, self.pos + 256)
        if end < 0:
            raise PickleRefused("a GLOBAL name is not terminated within 256 bytes")
        out = self.take(end - self.pos)
        self.pos += 1
        try:
            return out.decode("ascii")
        except UnicodeDecodeError:
            raise PickleRefused("a GLOBAL name is not ASCII") from None


def loads(data: bytes) -> Any:
    """The plain value (dicts, lists, tuples, scalars, bytes, str, numeric arrays) pickled in ``data``.

    Raises :class:`PickleRefused` for anything else: another global, a non-numeric dtype, array data of the
    wrong length, an unsupported or corrupt opcode stream. Never calls anything the file names.
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    value = _Reader(data).run()
    _check_tree(value, 0, set(), set())
    return value


_MAX_DEPTH = 64


def _check_tree(v: Any, depth: int, on_path: set[int], done: set[int]) -> None:
    """Refuse self-containing or very deeply nested containers (they break any later recursive walk)."""
    if not isinstance(v, (list, tuple, dict)) or id(v) in done:
        return
    if id(v) in on_path:
        raise PickleRefused("a container contains itself")
    if depth > _MAX_DEPTH:
        raise PickleRefused(f"containers are nested more than {_MAX_DEPTH} deep")
    on_path.add(id(v))
    for item in ([*v.keys(), *v.values()] if isinstance(v, dict) else v):
        _check_tree(item, depth + 1, on_path, done)
    on_path.discard(id(v))
    done.add(id(v))
