"""`atomic_write` gives the file the mode a plain write gets under the process umask, whatever the
writer used (safetensors writes 0600)."""

import os

import pytest
import torch
from safetensors.torch import save_file

from omnimem_train.utils.atomic import atomic_write


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_atomic_write_gives_umask_mode(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = atomic_write(tmp_path / "w.safetensors",
                            lambda tmp: save_file({"a": torch.zeros(2)}, str(tmp)))
    finally:
        os.umask(old)
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~umask)
    assert list(tmp_path.iterdir()) == [path]
