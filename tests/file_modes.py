"""Running a child process under file modes, as root too (CI runs as root, whom modes do not stop)."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable


def _drop_file_mode_override() -> None:
    """(In a child process, before it runs its command) root without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH,
    dropped from its bounding set: file modes then apply to it as to any user."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def under_file_modes() -> Callable[[], None] | None:
    """`preexec_fn` for `subprocess.run`: root's children lose the capabilities that override file modes; other
    users' need nothing."""
    return _drop_file_mode_override if os.geteuid() == 0 else None
