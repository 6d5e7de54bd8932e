"""dict() and list(): Manager().dict()/list() without the server.

Values that map onto C++ (None, bool, int, float, str, bytes, plain lists
and dicts of them) are stored natively; anything else is pickled. A nested
plain list or dict comes back as a copy (as from a Manager); store a
libshm.dict() or libshm.list() inside another to share it (it is stored by
name, as a Manager stores a proxy).
"""

from collections.abc import MutableMapping, MutableSequence

from . import _arena, _core

__all__ = ["DictProxy", "ListProxy", "dict", "list"]

_builtin_dict = dict
_builtin_list = list


def _rebuild(cls, segment, name):
    obj = cls.__new__(cls)
    obj._set_handle(cls._core_type.open(_arena.segment(segment), name))
    return _arena.track(obj)


class _Container:
    _core_type = None

    def _make(self, name):
        if name is None:
            h = _arena.place(lambda seg, n: self._core_type.open_or_create(seg, n))
        else:
            seg = _arena.open_or_create(name, _arena.arena_size())
            h = self._core_type.open_or_create(seg, name)
        self._set_handle(h)
        _arena.track(self)

    def _set_handle(self, h):
        self._h = h

    def __reduce__(self):
        return (_rebuild, (type(self), self._h.segment.name, self._h.name))

    @property
    def name(self):
        """Not in multiprocessing: (segment name, object name), what another
        program opens (C++: shm::Dict::open / shm::List::open in that segment)."""
        return (self._h.segment.name, self._h.name)


class DictProxy(_Container, MutableMapping):
    """Manager().dict() without a server: a dict shared by processes,
    every operation one atomic step in shared memory.

    Differs from a Manager's dict: it iterates (keys(), values(), items(),
    popitem()) in its table's order, not insertion order; name= opens or
    makes a dict of that name; increment() is an extension. str, int and
    bytes keys are stored as such, other keys pickled: keys that are equal
    but differ in type (1 and 1.0) are different keys here. Values that map
    onto C++ (None, bool, int, float, str, bytes, plain lists and dicts of
    them) are stored as such, other values pickled."""
    _core_type = _core.Dict

    def __init__(self, *args, name=None, **kwargs):
        self._make(name)
        if args or kwargs:
            self.update(*args, **kwargs)

    def _set_handle(self, h):
        self._h = h
        # The handle's plain builtins, the one call under d[key].
        self._getitem, self._setitem = h._fast()

    def __getitem__(self, key):
        return self._getitem(key)

    def __setitem__(self, key, value):
        self._setitem(key, value)

    def __delitem__(self, key):
        del self._h[key]

    def __contains__(self, key):
        return key in self._h

    def __len__(self):
        return len(self._h)

    def __iter__(self):
        """The keys of a snapshot, in table order; RuntimeError if the
        dict's size changes meanwhile, as for a dict."""
        keys = self._h._raw_keys()
        size = len(keys)
        for k in keys:
            if len(self._h) != size:
                raise RuntimeError("dictionary changed size during iteration")
            yield k
        if len(self._h) != size:
            raise RuntimeError("dictionary changed size during iteration")

    def keys(self):
        """A list of the keys, as a Manager's dict gives (not a view)."""
        return self._h._raw_keys()

    def values(self):
        """A list of the values, as a Manager's dict gives (not a view)."""
        return self._h.values()

    def items(self):
        """A list of (key, value) pairs, as a Manager's dict gives (not a view)."""
        return self._h.items()

    def get(self, key, default=None):
        """As dict.get()."""
        return self._h.get(key, default)

    def pop(self, key, *default):
        """As dict.pop(), atomically."""
        return self._h.pop(key, *default)

    def popitem(self):
        """Remove and return a (key, value) pair: the first in table order,
        where dict.popitem() takes the last inserted."""
        for k in self._h._raw_keys():
            try:
                return (k, self._h.pop(k))
            except KeyError:
                continue
        raise KeyError("popitem(): dictionary is empty")

    def setdefault(self, key, default=None):
        """As dict.setdefault(), atomically (one process sets it)."""
        return self._h.setdefault(key, default)

    def update(self, *args, **kwargs):
        """As dict.update(), in one atomic step."""
        if len(args) > 1:
            raise TypeError(f"update expected at most 1 argument, got {len(args)}")
        items = []
        if args:
            other = args[0]
            if isinstance(other, DictProxy):
                items.extend(other.items())
            elif hasattr(other, "keys"):
                items.extend((k, other[k]) for k in other.keys())
            else:
                items.extend(other)
        items.extend(kwargs.items())
        self._h._update_items(items)

    def increment(self, key, n=1):
        """Not in multiprocessing: add n to the number at key (0 if missing),
        atomically; returns the new value (a float if n is one). Unlike
        d[key] += n, no update from another process is lost."""
        return self._h.increment(key, n)

    def clear(self):
        """As dict.clear(), atomically."""
        self._h.clear()

    def copy(self):
        """A plain dict with the same items (a snapshot), as a Manager's dict gives."""
        return self._h.copy()

    def __eq__(self, other):
        if isinstance(other, DictProxy):
            other = other.copy()
        return self.copy() == other

    __hash__ = None

    def __repr__(self):
        return repr(self.copy())


class ListProxy(_Container, MutableSequence):
    """Manager().list() without a server: a list shared by processes.

    Each operation is one atomic step in shared memory. Those that rewrite
    the whole list (slice assignment and deletion, reverse(), sort(), *=)
    change a copy, with no lock held, and put it back in one
    compare-and-set: if another process changed the list meanwhile, they
    start again from a new copy, so no update is lost (and a sort key
    function may run more than once). name= opens or makes a list of that
    name."""
    _core_type = _core.List

    def __init__(self, iterable=(), *, name=None):
        self._make(name)
        if iterable:
            self._h.extend(iterable)

    def __len__(self):
        return len(self._h)

    def __getitem__(self, i):
        return self._h[i]

    def __setitem__(self, i, value):
        if isinstance(i, slice):
            value = _builtin_list(value)  # an iterator is read once, whatever the retries
            self._rewrite(lambda items: items.__setitem__(i, value))
        else:
            self._h[i] = value

    def __delitem__(self, i):
        if isinstance(i, slice):
            self._rewrite(lambda items: items.__delitem__(i))
        else:
            del self._h[i]

    def _rewrite(self, change):
        # change(items) changes a plain copy in place; the result replaces
        # the list in one compare-and-set (retried if the list changed).
        def changed(items):
            change(items)
            return items
        self._h._rewrite(changed)

    def __iter__(self):
        # Reads each item as it goes, as a Manager's list proxy does.
        i = 0
        while True:
            try:
                yield self._h[i]
            except IndexError:
                return
            i += 1

    def insert(self, i, value):
        """As list.insert(), atomically."""
        self._h.insert(i, value)

    def append(self, value):
        """As list.append(), atomically."""
        self._h.append(value)

    def extend(self, values):
        """As list.extend(), in one atomic step."""
        self._h.extend(values)

    def pop(self, i=-1):
        """As list.pop(), atomically."""
        return self._h.pop(i)

    def remove(self, value):
        """As list.remove(), atomically."""
        self._h.remove(value)

    def index(self, value, *args):
        """As list.index(); atomic without start and stop."""
        if args:
            return self._h.copy().index(value, *args)
        return self._h.index(value)

    def count(self, value):
        """As list.count()."""
        return self._h.count(value)

    def clear(self):
        """As list.clear(), atomically."""
        self._h.clear()

    def reverse(self):
        """As list.reverse(), in one atomic step (see the class)."""
        self._rewrite(lambda items: items.reverse())

    def sort(self, *, key=None, reverse=False):
        """As list.sort(), in one atomic step (see the class); key may be
        called again if another process changes the list meanwhile."""
        self._rewrite(lambda items: items.sort(key=key, reverse=reverse))

    def copy(self):
        """A plain list with the same items (a snapshot)."""
        return self._h.copy()

    def __iadd__(self, values):
        self._h.extend(values)
        return self

    def __imul__(self, n):
        self._rewrite(lambda items: items.__imul__(n))
        return self

    def __add__(self, other):
        return self._h.copy() + _builtin_list(other)

    def __radd__(self, other):
        return _builtin_list(other) + self._h.copy()

    def __mul__(self, n):
        return self._h.copy() * n

    def __eq__(self, other):
        if isinstance(other, ListProxy):
            other = other.copy()
        return self._h.copy() == other

    def __lt__(self, other):
        return self._h.copy() < _builtin_list(other)

    __hash__ = None

    def __repr__(self):
        return repr(self._h.copy())


def dict(*args, name=None, **kwargs):
    """A shared dict, as Manager().dict(): dict(mapping_or_items, **kwargs)."""
    return DictProxy(*args, name=name, **kwargs)


def list(iterable=(), *, name=None):
    """A shared list, as Manager().list(): list(iterable)."""
    return ListProxy(iterable, name=name)
