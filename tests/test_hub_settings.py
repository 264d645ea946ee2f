"""The suite runs the same whatever Hugging Face settings the machine has (`tests/__init__.py` replaces them).

An offline cluster sets `HF_HUB_OFFLINE=1`, a mirror sets `HF_ENDPOINT`, a logged-in user has `HF_TOKEN` and their own
`HF_HOME`. The libraries read these once, at import; the tests talk to their own loopback Hub and must neither be
refused by offline mode nor send anything to the machine's endpoint.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import datasets
import huggingface_hub
import pytest
import transformers.utils.hub
from huggingface_hub import HfApi

from tests.hub_server import HubServer

REPOSITORY = Path(__file__).parent.parent
# What an offline cluster with a mirror and a login might set; 10.255.255.1 is never contacted (the test below
# checks that the endpoint the tests use is loopback), and /proc cannot hold a folder.
MACHINE_SETTINGS = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_ENDPOINT": "http://10.255.255.1",
    "HF_TOKEN": "hf_bogus",
    "HF_HOME": "/proc/llava-tests-no-hf-home",
}
SUBPROCESS_VIEW = """
import json, os
from huggingface_hub import constants
print(json.dumps([constants.HF_HUB_OFFLINE, constants.ENDPOINT, constants.HF_HOME, os.environ.get("HF_TOKEN")]))
"""


def test_the_libraries_see_the_suites_hub_settings_in_this_process_and_its_subprocesses(tmp_path):
    hub = huggingface_hub.constants
    assert not hub.HF_HUB_OFFLINE and not datasets.config.HF_HUB_OFFLINE
    assert urlsplit(hub.ENDPOINT).hostname == urlsplit(datasets.config.HF_ENDPOINT).hostname == "127.0.0.1"
    assert huggingface_hub.get_token() is None
    home = Path(hub.HF_HOME)
    assert os.access(home, os.W_OK) and Path(transformers.utils.hub.HF_MODULES_CACHE).is_relative_to(home)
    assert Path(hub.HF_TOKEN_PATH).is_relative_to(home) and Path(hub.HF_HUB_CACHE).is_relative_to(home)

    # A Hub call made by mistake is refused at once, on this machine.
    with pytest.raises(Exception, match="(?i)refused"):
        HfApi().model_info("someone/model")
    # Offline mode is off: the loopback Hub of a test is reached.
    with HubServer(tmp_path / "hub") as server:
        HfApi(endpoint=server.url, token=server.token).create_repo("tester/settings")
        assert "tester/settings" in server.repos

    seen = subprocess.run([sys.executable, "-c", SUBPROCESS_VIEW], capture_output=True, text=True, check=True)
    assert json.loads(seen.stdout) == [False, hub.ENDPOINT, str(home), None]


@pytest.mark.slow
def test_the_machines_hub_settings_do_not_reach_the_tests():
    """The test above, in a pytest session started under the settings of an offline cluster with a login."""
    test = test_the_libraries_see_the_suites_hub_settings_in_this_process_and_its_subprocesses.__name__
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"{__file__}::{test}"]
    done = subprocess.run(
        command, cwd=REPOSITORY, env={**os.environ, **MACHINE_SETTINGS}, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
