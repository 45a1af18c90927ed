"""A Drive-like slow folder: a FUSE passthrough whose writes are held to a set rate.

    python benchmarks/slowfs.py BACKING MOUNTPOINT --rate-mbps 4   # foreground; Ctrl-C unmounts

Every file operation goes to ``BACKING``; ``write()`` sleeps so that all writes through the
mount together never exceed ``--rate-mbps`` (one serial "upload link": a writer waits for the
bytes queued before it). Reads, renames, fsync and metadata are not slowed (``--latency-ms``
adds a fixed delay to every write call, for a round-trip-like cost). The kernel sends writes to
the daemon synchronously (no FUSE writeback cache), so a ``write(2)`` into the mount really
blocks the writer, as a save into a network file system would.

Needs the ``fusepy`` package, ``libfuse.so.2`` (Debian: ``libfuse2``) and ``/dev/fuse``
(root, or ``fusermount`` from Debian ``fuse3``). :func:`mounted` starts it as a subprocess
and unmounts it afterwards; :func:`why_unavailable` says why it cannot run here.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

MB = 1e6
BURST_S = 0.25  # s of writes allowed at full speed after an idle time


def why_unavailable() -> str | None:
    """None when a mount can be tried here, else the reason it cannot."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    try:
        import fuse  # noqa: F401  (fusepy)
    except (ImportError, OSError, EnvironmentError) as e:
        return f"fusepy/libfuse2 unavailable ({type(e).__name__}: {e}); pip install fusepy, apt-get install libfuse2 fuse3"
    return None


@contextlib.contextmanager
def mounted(backing, mountpoint, rate_mbps: float, latency_ms: float = 0.0, timeout_s: float = 15.0):
    """Mount the slow passthrough of ``backing`` at ``mountpoint`` for the ``with`` block.

    Raises RuntimeError (with the daemon's output) when the mount does not come up.
    """
    backing, mountpoint = Path(backing), Path(mountpoint)
    backing.mkdir(parents=True, exist_ok=True)
    mountpoint.mkdir(parents=True, exist_ok=True)
    log = mountpoint.with_name(mountpoint.name + ".slowfs.log")
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), str(backing),
                                 str(mountpoint), "--rate-mbps", str(rate_mbps),
                                 "--latency-ms", str(latency_ms)],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        t0 = time.time()
        while not os.path.ismount(mountpoint):
            if proc.poll() is not None or time.time() - t0 > timeout_s:
                raise RuntimeError(f"FUSE mount at {mountpoint} did not come up (daemon "
                                   f"{'exited ' + str(proc.returncode) if proc.poll() is not None else 'timed out'}): "
                                   f"{log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)
        yield mountpoint
    finally:
        if os.path.ismount(mountpoint):
            for cmd in (["fusermount", "-u", str(mountpoint)], ["umount", str(mountpoint)],
                        ["umount", "-l", str(mountpoint)]):
                if shutil.which(cmd[0]) and subprocess.run(cmd, capture_output=True).returncode == 0:
                    break
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.terminate()  # our own daemon, by its pid
            proc.wait(timeout=10)


def measure_write_rate(folder, nbytes: int = 16 * 2 ** 20) -> float:
    """MB/s of one ``nbytes`` file written (and fsynced) into ``folder``."""
    path = Path(folder) / ".slowfs-probe"
    block = os.urandom(2 ** 20)
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        for _ in range(nbytes // len(block)):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    dt = time.perf_counter() - t0
    path.unlink()
    return nbytes / MB / dt


def _make_fs_class():
    from fuse import FuseOSError, Operations

    class SlowPassthrough(Operations):
        """fusepy's loopback example, with a shared write-rate limit."""

        def __init__(self, root: str, rate_mbps: float, latency_ms: float):
            self.root = os.path.realpath(root)
            self.rate = rate_mbps * MB  # bytes per second
            self.latency = latency_ms / 1000.0
            self._rate_lock = threading.Lock()
            self.free_at = time.monotonic()
            self.written = 0

        def _p(self, path):
            return os.path.join(self.root, path.lstrip("/"))

        def __call__(self, op, path, *args):
            try:
                return super().__call__(op, self._p(path), *args)
            except OSError as e:
                raise FuseOSError(e.errno or errno.EIO) from e

        # --- the throttle
        def _hold(self, n: int) -> None:
            with self._rate_lock:
                # a token bucket with BURST_S of credit: the per-call overhead of FUSE and this
                # daemon overlaps the sleeps, so a steady writer gets the set rate, not less
                start = max(time.monotonic() - BURST_S, self.free_at)
                self.free_at = start + n / self.rate
                self.written += n
                until = self.free_at
            delay = until - time.monotonic() + self.latency
            if delay > 0:
                time.sleep(delay)

        def write(self, path, data, offset, fh):
            n = os.pwrite(fh, data, offset)
            self._hold(n)
            return n

        # --- plain passthrough
        def access(self, path, mode):
            if not os.access(path, mode):
                raise FuseOSError(errno.EACCES)

        chmod = os.chmod
        chown = os.chown

        def create(self, path, mode, fi=None):
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)

        def flush(self, path, fh):
            return 0

        def fsync(self, path, datasync, fh):
            return os.fdatasync(fh) if datasync else os.fsync(fh)

        def fsyncdir(self, path, datasync, fh):
            return 0

        def getattr(self, path, fh=None):
            st = os.lstat(path)
            return {k: getattr(st, k) for k in ("st_atime", "st_ctime", "st_gid", "st_mode",
                                               "st_mtime", "st_nlink", "st_size", "st_uid")}

        getxattr = None
        listxattr = None

        def link(self, target, source):
            return os.link(self._p(source), target)

        mkdir = os.mkdir
        mknod = os.mknod

        def open(self, path, flags):
            return os.open(path, flags)

        def read(self, path, size, offset, fh):
            return os.pread(fh, size, offset)

        def readdir(self, path, fh):
            return [".", ".."] + os.listdir(path)

        readlink = os.readlink

        def release(self, path, fh):
            return os.close(fh)

        def rename(self, old, new):
            return os.rename(old, self._p(new))

        rmdir = os.rmdir

        def statfs(self, path):
            stv = os.statvfs(path)
            return {k: getattr(stv, k) for k in ("f_bavail", "f_bfree", "f_blocks", "f_bsize",
                                                "f_favail", "f_ffree", "f_files", "f_flag",
                                                "f_frsize", "f_namemax")}

        def symlink(self, target, source):
            return os.symlink(source, target)

        def truncate(self, path, length, fh=None):
            if fh is not None:
                os.ftruncate(fh, length)
            else:
                with open(path, "r+") as f:
                    f.truncate(length)

        unlink = os.unlink
        utimens = os.utime

    return SlowPassthrough


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("backing")
    ap.add_argument("mountpoint")
    ap.add_argument("--rate-mbps", type=float, required=True, help="write rate, MB/s (1 MB = 10^6 B)")
    ap.add_argument("--latency-ms", type=float, default=0.0, help="extra delay per write call")
    args = ap.parse_args(argv)
    from fuse import FUSE

    fs = _make_fs_class()(args.backing, args.rate_mbps, args.latency_ms)
    print(f"slowfs: {args.backing} at {args.mountpoint}, writes held to {args.rate_mbps} MB/s", flush=True)
    # big_writes: 128 KiB write calls (libfuse2 default is 4 KiB); kernel_cache: reads of
    # unchanged files (shards) come from the page cache, not through this daemon again.
    FUSE(fs, args.mountpoint, foreground=True, nothreads=False, big_writes=True,
         max_write=131072, kernel_cache=True, default_permissions=True)
    print(f"slowfs: unmounted; {fs.written / MB:.1f} MB written", flush=True)


if __name__ == "__main__":
    main()
