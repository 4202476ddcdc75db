"""Root pytest configuration, shared by tests/ and the nbval run over solutions/.

A failed exercise check raises inside a notebook, so nbval fails on a wrong
solution. MECHINTERP_SOURCE is left as the caller set it (unset = real weights
where loadable, stand-ins elsewhere).
"""

import os

os.environ.setdefault("MECHINTERP_CHECKS_RAISE", "1")
os.environ.setdefault("PYTHONHASHSEED", "0")
