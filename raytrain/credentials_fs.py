"""A pyarrow filesystem handler for a storage URI whose credentials were taken out of it (raytrain.storage.adopt):
it opens the filesystem with the credentials of the process using it (its ``RAYTRAIN_STORAGE_CREDENTIALS``), and it
pickles as the URI alone, so what Ray ships between processes and what Tune saves in its experiment state holds no
credential. Imported when such a filesystem is first made (pyarrow.fs is not needed to read a spec)."""

from __future__ import annotations

import pyarrow.fs as pafs

from .credentials import CREDENTIALS_ENV, open_uri, with_credentials


class ResolvingHandler(pafs.FileSystemHandler):
    """Delegates to the filesystem of ``location`` with credentials from the environment of the process using it."""

    def __init__(self, location: str, fs=None):
        self.location, self._fs = location, fs

    def __reduce__(self):
        return ResolvingHandler, (self.location,)

    def __eq__(self, other):
        return isinstance(other, type(self)) and other.location == self.location

    def __ne__(self, other):
        return not self == other

    @property
    def fs(self):
        if self._fs is None:
            full = with_credentials(self.location)
            if full == self.location:
                raise PermissionError(f"storage {self.location}: its credentials were given in the URI to the "
                                      f"driver, and this process has none ({CREDENTIALS_ENV} is not set here)")
            self._fs = open_uri(full)[0]
        return self._fs

    def get_type_name(self):
        return f"raytrain+{self.fs.type_name}"

    def normalize_path(self, path):
        return self.fs.normalize_path(path)

    def get_file_info(self, paths):
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.fs.get_file_info(selector)

    def create_dir(self, path, recursive):
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        self.fs.delete_dir_contents("/", accept_root_dir=True)

    def delete_file(self, path):
        self.fs.delete_file(path)

    def move(self, src, dest):
        self.fs.move(src, dest)

    def copy_file(self, src, dest):
        self.fs.copy_file(src, dest)

    def open_input_stream(self, path):
        return self.fs.open_input_stream(path)

    def open_input_file(self, path):
        return self.fs.open_input_file(path)

    def open_output_stream(self, path, metadata):
        return self.fs.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path, metadata):
        return self.fs.open_append_stream(path, metadata=metadata)

