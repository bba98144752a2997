"""How a Space's files decide its build (no server, no processes)."""

from __future__ import annotations

import sys

import pytest

from cove.server.spaces.builder import env_key
from cove.server.spaces.config import SpaceConfigError, parse_config

HERE = f"{sys.version_info.major}.{sys.version_info.minor}"


def readme(**meta: str) -> bytes:
    return ("---\n" + "".join(f"{k}: {v}\n" for k, v in meta.items()) + "---\n# x\n").encode()


def test_front_matter_decides_sdk_version_and_app_file():
    config = parse_config(readme(sdk="gradio", sdk_version="5.9.1", app_file="src/main.py"),
                          b"numpy>=2  # arrays\n\n# a comment\ntorch\n", None, None)
    assert (config.sdk, config.sdk_version, config.app_file) == ("gradio", "5.9.1", "src/main.py")
    assert config.install_lines() == ["gradio==5.9.1", "numpy>=2", "torch"]
    assert config.warnings == [] and config.packages == []


def test_repository_sdk_and_defaults_apply_without_front_matter():
    config = parse_config(b"# no metadata\n", None, None, "streamlit")
    assert (config.sdk, config.app_file, config.install_lines()) == (
        "streamlit", "app.py", ["streamlit"])
    static = parse_config(readme(sdk="static"), b"numpy\n", None, "gradio")
    assert (static.sdk, static.app_file) == ("static", "index.html")


def test_cove_comes_from_the_server_not_the_index():
    config = parse_config(readme(sdk="gradio"), b"cove\nCove[server]>=0.1\nrequests\n",
                          None, None)
    assert config.uses_cove
    assert config.install_lines() == ["gradio", "requests"]
    # A package whose name merely starts with "cove" is a package from the index.
    assert parse_config(readme(sdk="gradio"), b"covalent\n", None, None).uses_cove is False


@pytest.mark.parametrize("meta, stage, words", [
    ({"sdk": "docker"}, "CONFIG_ERROR", "Docker Spaces are not supported"),
    ({"sdk": "flask"}, "CONFIG_ERROR", "Unknown or missing sdk 'flask'"),
    ({"sdk": "gradio", "sdk_version": "'6; rm -rf /'"}, "CONFIG_ERROR", "Invalid sdk_version"),
    ({"sdk": "gradio", "app_file": "../../etc/passwd"}, "CONFIG_ERROR", "Invalid app_file"),
])
def test_configurations_that_cannot_run_say_why(meta, stage, words):
    with pytest.raises(SpaceConfigError) as e:
        parse_config(readme(**meta), None, None, None)
    assert e.value.stage == stage and words in str(e.value)


def test_other_python_version_is_a_warning_and_packages_are_listed():
    config = parse_config(readme(sdk="gradio", python_version="'3.8'"), None,
                          b"ffmpeg\n# comment\nlibsndfile1\n", None)
    assert config.warnings == [
        f"python_version 3.8 is not available on this Hub: running on Python {HERE}."
    ]
    assert config.packages == ["ffmpeg", "libsndfile1"]
    assert parse_config(readme(sdk="gradio", python_version=HERE), None, None, None).warnings == []


def test_environment_key_follows_what_is_installed_and_the_owner():
    base = parse_config(readme(sdk="gradio"), b"numpy\n", None, None)
    key = env_key(base, "/usr/bin/python3", "alice")
    assert key == env_key(parse_config(readme(sdk="gradio", title="other"), b"numpy\n", None,
                                       None), "/usr/bin/python3", "alice")
    assert key != env_key(base, "/usr/bin/python3", "bob")  # never shared across owners
    assert key != env_key(parse_config(readme(sdk="gradio"), b"numpy\npandas\n", None, None),
                          "/usr/bin/python3", "alice")
    assert key != env_key(parse_config(readme(sdk="gradio", sdk_version="5.0"), b"numpy\n",
                                       None, None), "/usr/bin/python3", "alice")
