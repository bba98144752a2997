import sqlite3
import subprocess
import sys


def run(*args, data):
    return subprocess.run([sys.executable, "-m", "cove", *args, "--data", str(data)],
                          capture_output=True, text=True)


def test_accounts_and_hashed_tokens(tmp_path):
    assert run("admin", "user", "create", "carol", data=tmp_path).returncode == 0
    dup = run("admin", "user", "create", "carol", data=tmp_path)
    assert dup.returncode == 1 and "already exists" in dup.stderr
    assert run("admin", "user", "create", "api", data=tmp_path).returncode == 1  # reserved
    bad = run("admin", "user", "create", "no/slash", data=tmp_path)
    assert bad.returncode == 1 and "Invalid account name" in bad.stderr
    assert run("admin", "org", "create", "lab", "--member", "carol", data=tmp_path).returncode == 0
    token = run("admin", "token", "create", "carol", "--role", "write", "--name", "ci",
                data=tmp_path).stdout.strip()
    assert token.startswith("hf_")
    db = sqlite3.connect(tmp_path / "cove.db")
    stored = [row[0] for row in db.execute("select hash from tokens")]
    assert token not in stored and len(stored) == 1 and len(stored[0]) == 64
    listed = run("admin", "token", "list", "carol", data=tmp_path).stdout
    assert "ci\twrite" in listed and token not in listed
    assert "revoked 1" in run("admin", "token", "revoke", "carol", "--name", "ci", data=tmp_path).stdout
    missing = run("admin", "token", "create", "nobody", data=tmp_path)
    assert missing.returncode == 1 and "No user named 'nobody'" in missing.stderr


def test_help_lists_verbs():
    out = subprocess.run([sys.executable, "-m", "cove", "--help"], capture_output=True, text=True)
    assert "serve" in out.stdout and "admin" in out.stdout
