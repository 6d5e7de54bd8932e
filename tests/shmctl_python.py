"""The Python side of shmctl's end-to-end test: programs that use /dev/shm the
way Python programs do, either to be SIGKILLed (leaving their files behind)
or to keep running while shmctl gc works around them.

usage: shmctl_python.py MODE NAME SIZE

  leak         multiprocessing.shared_memory.SharedMemory(create=True) plus a
               spawn-context Lock (a sem.mp-* file); says "ready NAME" and
               waits to be killed. Its resource tracker runs in the same
               process group, so killing the group leaks both files.
  live-shm     SharedMemory NAME, created, mapped and its descriptor kept
  live-open    the file NAME only held open (no mapping)
  live-mapped  the file NAME only mapped (descriptor closed)

The live modes say "ready NAME", then answer each "check" line on stdin with
"ok" if their data is intact and the file still has its name, until stdin
closes. Space is reserved with posix_fallocate, so a full filesystem is an
error here, never a SIGBUS.
"""

import mmap
import multiprocessing
import os
import sys
from multiprocessing import shared_memory

SHM_DIR = "/dev/shm"
MAGIC = 0x5A


def say(*words):
    print(*words, flush=True)


def serve(check):
    for line in sys.stdin:
        if line.strip() == "check":
            try:
                ok = check()
            except Exception as e:  # report, do not die: the test reads the answer
                say("error", repr(e))
                continue
            say("ok" if ok else "bad")


def main():
    mode, name, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    path = os.path.join(SHM_DIR, name)
    if mode == "leak":
        shm = shared_memory.SharedMemory(create=True, size=size)
        os.posix_fallocate(shm._fd, 0, size)
        shm.buf[0] = MAGIC
        lock = multiprocessing.get_context("spawn").Lock()
        say("ready", shm.name)
        sys.stdin.read()  # until killed
        del lock
    elif mode == "live-shm":
        shm = shared_memory.SharedMemory(name=name, create=True, size=size)
        os.posix_fallocate(shm._fd, 0, size)
        shm.buf[0] = MAGIC
        say("ready", shm.name)

        def check():
            again = shared_memory.SharedMemory(name=name)  # the name still works
            ok = again.buf[0] == MAGIC and shm.buf[0] == MAGIC
            again.close()
            return ok

        serve(check)
    elif mode == "live-open":
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.posix_fallocate(fd, 0, size)
        os.pwrite(fd, bytes([MAGIC]), 0)
        say("ready", name)
        serve(lambda: os.pread(fd, 1, 0) == bytes([MAGIC]) and os.path.exists(path))
    elif mode == "live-mapped":
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.posix_fallocate(fd, 0, size)
        m = mmap.mmap(fd, size)
        os.close(fd)
        m[0] = MAGIC
        say("ready", name)
        serve(lambda: m[0] == MAGIC and os.path.exists(path))
    else:
        sys.exit("unknown mode " + mode)


if __name__ == "__main__":
    main()
