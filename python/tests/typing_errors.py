"""Calls that are wrong: check_typing.py runs mypy --strict over this file
and expects an error on each line whose comment starts with error, with
the text after it, and on no other line."""

import threading

import libshm

q: libshm.Queue[int] = libshm.Queue()
q.put("text")  # error: Argument 1 to "put" of "Queue" has incompatible type "str"
text: str = q.get()  # error: Incompatible types in assignment
q.get(True, "soon")  # error: Argument 2 to "get" of "Queue" has incompatible type "str"
libshm.Queue(8, "jobs")  # error: Too many positional arguments
libshm.SimpleQueue().put(1, block=False)  # error: Unexpected keyword argument "block"
libshm.JoinableQueue().task_done(1)  # error: Too many arguments for "task_done"
libshm.Lock("name")  # error: Too many positional arguments
libshm.Lock().acquire(timeout="1")  # error: Argument "timeout" to "acquire" of "Lock"
libshm.Semaphore(value="2")  # error: Argument "value" to "Semaphore" has incompatible type "str"
libshm.Condition(threading.Lock())  # error: Argument 1 to "Condition" has incompatible type
libshm.Barrier()  # error: Missing positional argument "parties"
libshm.Event().wait("1")  # error: Argument 1 to "wait" of "Event" has incompatible type "str"
counts = libshm.dict(a=1)
counts["b"] = "two"  # error: Incompatible types in assignment
counts.increment("a", "1")  # error: No overload variant of "increment" of "DictProxy" matches
items = libshm.list([1, 2])
items.append("three")  # error: Argument 1 to "append" of "ListProxy" has incompatible type "str"
libshm.Manager().Namespace()  # error: "Manager" has no attribute "Namespace"
libshm.RawArray("i", 3, lock=True)  # error: Unexpected keyword argument "lock" for "RawArray"
