"""The test suite. Under pytest, this package first cuts the suite off from the machine's Hugging Face settings.

`HF_HUB_OFFLINE`, `HF_ENDPOINT`, `HF_TOKEN`, `HF_HOME` and their kin change what huggingface_hub, transformers and
datasets do (offline mode refuses the tests' own loopback Hub, a token or an endpoint of the machine's would be sent),
and those libraries read them once, when first imported. pytest imports this package before `tests/conftest.py`, so
before any of them: the variables are replaced here, in `os.environ`, where the test process and every subprocess it
starts read them. The suite then runs with the libraries' defaults, except that the Hub is a loopback address where
nothing answers (a test that reaches for the Hub by mistake is refused at once, and nothing leaves the machine) and
`HF_HOME` is a fresh folder of this session (no saved login, no cache of the machine's). The tests that need a Hub
start their own (`tests/hub_server.py`) and point the process at it.

A subprocess that imports `tests.conftest` for its helpers keeps the environment its test gave it: pytest is not
loaded there.
"""

import atexit
import os
import shutil
import socket
import sys
import tempfile

# Besides every HF_*, HUGGINGFACE_* and HUGGING_FACE_* variable: transformers' names for offline mode and its cache.
TRANSFORMERS_HUB_VARIABLES = ("TRANSFORMERS_OFFLINE", "TRANSFORMERS_CACHE")


def _isolate_from_the_machines_hub_settings() -> None:
    for name in list(os.environ):
        if name.startswith(("HF_", "HUGGINGFACE_", "HUGGING_FACE_")) or name in TRANSFORMERS_HUB_VARIABLES:
            del os.environ[name]
    home = tempfile.mkdtemp(prefix="llava-tests-hf-home-")
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    os.environ["HF_HOME"] = home
    # A port bound for the session and never listened on: a connection to it is refused.
    refusing = socket.socket()
    refusing.bind(("127.0.0.1", 0))
    atexit.register(refusing.close)
    os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{refusing.getsockname()[1]}"


if "_pytest" in sys.modules:
    _isolate_from_the_machines_hub_settings()
