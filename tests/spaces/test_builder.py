"""The environment builder's pieces that need no package index."""

from __future__ import annotations

import json
import site
import subprocess
import sys
from pathlib import Path

import cove
from cove.server.spaces.builder import _share_server_packages


def test_cove_in_requirements_shares_the_servers_installation(tmp_path):
    venv = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    lines: list[str] = []
    _share_server_packages(venv, lines.append)
    assert lines[-1].startswith("cove: shared from the server's installation")
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import json, sys, cove; print(json.dumps([cove.__file__, sys.path]))"],
        check=True, capture_output=True, text=True,
    ).stdout
    cove_file, path = json.loads(out)
    assert Path(cove_file) == Path(cove.__file__)  # the server's own cove
    own = next(venv.glob("lib/python*/site-packages"))
    server = site.getsitepackages()[0]
    # The Space's own packages come first: its pins win over the server's versions.
    assert path.index(str(own)) < path.index(server)
