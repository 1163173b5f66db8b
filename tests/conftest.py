"""Test-session set-up that must happen before any test module imports triton.

Triton reads TRITON_INTERPRET when triton.language and our kernels are decorated (import time), so the
interpreter mode is switched on here, for the whole session, unless ATTNRL_TEST_GPU=1 asks for compiled kernels.
"""

import os

if os.environ.get("ATTNRL_TEST_GPU") != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")
