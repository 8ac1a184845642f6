"""A new LMDB written as Caffe's tools write theirs (commit every 1000 records, a progress line at
each commit), under a temporary name that is renamed when complete: an interrupted run never
leaves half a database under the real name."""
import logging
import os
import re
import shutil

import lmdb

from protonet.errors import ProtonetError
from protonet.io.atomic import remove_stale, replace, temporary_name, write_error

COMMIT_EVERY = 1000


class NewLmdb:
    """with NewLmdb(path, redo) as db: db.put(key, value) ...; db.count is the records written."""

    def __init__(self, path, redo=False, log=None, progress_line="Processed %d files.", log_last=True):
        self.path = os.path.normpath(os.fspath(path))
        if os.path.exists(self.path) and not redo:
            raise ProtonetError(f"{self.path} already exists; give --redo to recreate it")
        self.log = log or logging.getLogger("protonet.tools")
        self.progress_line = progress_line
        self.log_last = log_last  # the progress line once more at the end (when not just logged)
        self.count = 0
        self.tmp = temporary_name(self.path)
        self._env = self._txn = None

    def __enter__(self):
        parent = os.path.dirname(self.tmp)
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as exc:
            raise write_error(exc, self.path) from None
        remove_stale(parent, re.escape(os.path.basename(self.path)))  # what a killed run left
        self._env = lmdb.open(self.tmp, map_size=1 << 40, subdir=True, meminit=False, map_async=True)
        self._txn = self._env.begin(write=True)
        return self

    def put(self, key, value):
        self._txn.put(key.encode() if isinstance(key, str) else key, value)
        self.count += 1
        if self.count % COMMIT_EVERY == 0:
            self._txn.commit()
            self._txn = self._env.begin(write=True)
            self.log.info(self.progress_line, self.count)

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self._env.close()
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        self._txn.commit()
        if self.count % COMMIT_EVERY and self.log_last:
            self.log.info(self.progress_line, self.count)
        self._env.sync(True)
        self._env.close()
        replace(self.tmp, self.path)  # the complete database appears under its name at once
        return False
