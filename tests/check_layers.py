#!/usr/bin/env python3
"""Fails when a lower layer of libshm includes a higher one.

The layers, lowest first (libshm/src/<folder>, and the public headers each
folder owns):

  0 base      shm/error.hpp, names.hpp, object_kind.hpp, deadline.hpp,
              version.hpp, hash.hpp
  1 platform  libshm/src/platform: system calls, futexes, OFD locks, /proc
  2 core      libshm/src/core: process liveness, waiting, the robust
              mutex (the heap lock is one; RecursiveMutex's locking too);
              shm/mutex.hpp
  3 store     libshm/src/store: layout, heap, segments; shm/segment.hpp,
              allocator.hpp (Boost containers in a segment's heap)
  4 objects   libshm/src/objects: sync, queue, containers, shared arrays;
              shm/sync.hpp, queue.hpp, container.hpp, shared_array.hpp
  4 client    libshm/src/client: the daemon client and its protocol
  5 admin     libshm/src/admin: inspection, gc, rm, status; shm/admin.hpp
  5 remote    libshm/src/remote: the objects over NATS JetStream, a library
              of its own (shm::remote); shm/remote.hpp. It includes the
              public headers below it; nothing of the library includes it.
  6 umbrella  shm/shm.hpp (for programs, never for the library itself)

A file may include what is in its own layer or below, except that objects
and client, side by side, include nothing of each other. The daemon and the
tools above the library include only public headers (and the daemon the
protocol it shares with the client).

Usage: check_layers.py <repository root>
"""
import os
import re
import sys

BASE = {"error.hpp", "names.hpp", "object_kind.hpp", "deadline.hpp", "version.hpp", "hash.hpp"}
PUBLIC = {"segment.hpp": "store", "allocator.hpp": "store", "mutex.hpp": "core", "sync.hpp": "objects", "queue.hpp": "objects",
          "container.hpp": "objects", "shared_array.hpp": "objects", "work_queue.hpp": "objects",
          "admin.hpp": "admin", "pool.hpp": "pool", "remote.hpp": "remote", "shm.hpp": "umbrella"}
RANK = {"base": 0, "platform": 1, "core": 2, "store": 3, "objects": 4, "client": 4, "admin": 5, "pool": 5,
        "remote": 5, "umbrella": 6}
SIBLINGS = {("objects", "client"), ("client", "objects")}
INCLUDE = re.compile(r'^\s*#\s*include\s+[<"]([^>"]+)[>"]', re.M)


def layer_of_header(inc, including_dir):
    """The layer of an included header, or None for a system/third-party one."""
    if inc.startswith("shm/"):
        name = inc[4:]
        if name in BASE:
            return "base"
        return PUBLIC.get(name, "umbrella")
    folder = inc.split("/")[0] if "/" in inc else None
    if folder in RANK:
        return folder
    if folder is None and os.path.exists(os.path.join(including_dir, inc)):
        return "same"
    return None


def check_library(root, problems):
    src = os.path.join(root, "libshm", "src")
    inc_dir = os.path.join(root, "libshm", "include", "shm")
    files = []
    for dirpath, _, names in os.walk(src):
        for n in names:
            if n.endswith((".cpp", ".hpp")):
                rel = os.path.relpath(os.path.join(dirpath, n), src)
                folder = rel.split(os.sep)[0] if os.sep in rel else None
                if folder not in RANK:
                    problems.append(f"libshm/src/{rel}: not in a layer folder ({', '.join(sorted(set(RANK) - {'base', 'umbrella'}))})")
                    continue
                files.append((os.path.join(dirpath, n), f"libshm/src/{rel}", folder))
    for n in sorted(os.listdir(inc_dir)):
        name = n if n in BASE else None
        layer = "base" if name else PUBLIC.get(n)
        if layer is None:
            problems.append(f"libshm/include/shm/{n}: no layer assigned (add it to check_layers.py)")
            continue
        files.append((os.path.join(inc_dir, n), f"libshm/include/shm/{n}", layer))
    for path, shown, layer in files:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for inc in INCLUDE.findall(text):
            target = layer_of_header(inc, os.path.dirname(path))
            if target is None or target == "same":
                continue
            if (layer, target) in SIBLINGS or RANK[target] > RANK[layer]:
                problems.append(f"{shown} ({layer}) includes {inc} ({target})")


def check_programs(root, problems):
    for folder, allowed in (("daemon", {"client/daemon_protocol.hpp"}), ("tools", set())):
        d = os.path.join(root, folder)
        if not os.path.isdir(d):
            continue
        for n in sorted(os.listdir(d)):
            if not n.endswith((".cpp", ".hpp")):
                continue
            with open(os.path.join(d, n), encoding="utf-8") as f:
                text = f.read()
            for inc in INCLUDE.findall(text):
                folder_of = inc.split("/")[0] if "/" in inc else None
                if folder_of in RANK and inc not in allowed:
                    problems.append(f"{folder}/{n} includes the library's private {inc}")


def main():
    if len(sys.argv) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    problems = []
    check_library(sys.argv[1], problems)
    check_programs(sys.argv[1], problems)
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} include(s) against the layers")
        return 1
    print("layers: every include points down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
