"""Content-addressed file store for attachments and large raw messages: one file per sha256."""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from pathlib import Path

from mailbridge.errors import PermanentError, TransientError

# Running out of space or quota clears up without touching the message: retry it later.
_TRANSIENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EAGAIN, errno.EINTR, errno.EIO})


class BlobStore:
    """Files at `root/ab/cd/<sha256>`; the same bytes sent 100 times are stored once.

    A blob is written (and fsynced) before the database row that names it is committed, so a
    crash can leave an unreferenced file but never a row without its bytes.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_for(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def put(self, data: bytes) -> str:
        """Store `data` and return its sha256; storing bytes already present is a no-op."""
        digest = hashlib.sha256(data).hexdigest()
        target = self.path_for(digest)
        try:
            if target.exists() and target.stat().st_size == len(data):
                return digest
            new_directories = [d for d in (target.parent.parent, target.parent) if not d.is_dir()]
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, temp_name = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temp_name, target)
            except BaseException:
                Path(temp_name).unlink(missing_ok=True)
                raise
            # The rename and any new directory must be on disk before the row naming the
            # file commits: else a power cut could keep the row and lose the only copy.
            for directory in (target.parent, *(d.parent for d in new_directories)):
                _sync_directory(directory)
        except OSError as error:
            message = f"attachment store {self.root}: {error.strerror or error}"
            if error.errno in _TRANSIENT_ERRNOS:
                raise TransientError(message) from error
            raise PermanentError("store", message) from error
        return digest

    def get(self, sha256: str) -> bytes:
        return self.path_for(sha256).read_bytes()

    def head(self, sha256: str, count: int) -> bytes:
        """The first `count` bytes of a blob."""
        with self.path_for(sha256).open("rb") as handle:
            return handle.read(count)

    def kept_raw(self, inline: bytes, sha256: str, size: int) -> bytes:
        """A raw message as its inbound row keeps it: `inline`, or from here when that is
        empty for a non-empty message (see InboundMessage.raw).

        Raises OSError naming the file when it cannot be read or is not `size` bytes.
        """
        if inline or size == 0:
            return inline
        path = self.path_for(sha256)
        try:
            data = path.read_bytes()
        except OSError as error:
            reason = f"raw message of {size} bytes unreadable in the attachment store"
            raise OSError(error.errno, f"{reason} ({error.strerror})", str(path)) from None
        if len(data) != size:
            reason = f"raw message is {len(data)} bytes in the attachment store, not {size}"
            raise OSError(errno.EIO, reason, str(path))
        return data

    def exists(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()


def _sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
