"""hpcm_tune.source.code_commit: the commit of the checkout a package is imported from."""

import subprocess

from hpcm_tune.source import UNKNOWN, code_commit


def _git(cwd, *args):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def test_commit_of_a_tracked_package_then_dirty(tmp_path):
    package = tmp_path / "repo" / "pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("x = 1\n")
    _git(tmp_path / "repo", "init", "-q")
    assert code_commit(package) == UNKNOWN  # a repository, but the package is not tracked there
    _git(tmp_path / "repo", "add", "pkg/__init__.py")
    _git(tmp_path / "repo", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    head = _git(tmp_path / "repo", "rev-parse", "HEAD")
    assert code_commit(package) == head
    (package / "__init__.py").write_text("x = 2\n")
    assert code_commit(package) == head + "+dirty"


def test_outside_git_or_missing(tmp_path):
    (tmp_path / "pkg").mkdir()
    assert code_commit(tmp_path / "pkg") == UNKNOWN
    assert code_commit(tmp_path / "nowhere") == UNKNOWN
