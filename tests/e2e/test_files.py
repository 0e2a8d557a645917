"""`capsule.files`: write/read/read_bytes/list/exists/make_dir/remove through the SDK."""

from __future__ import annotations

import os

import pytest
from wrenn.exceptions import WrennNotFoundError, WrennValidationError


def test_write_str_read(capsule):
    text = "héllo wörld ✓\nsecond line\n"
    capsule.files.write("/tmp/hello.txt", text)
    assert capsule.files.read("/tmp/hello.txt") == text
    # Visible to commands too (same filesystem).
    assert capsule.commands.run("cat /tmp/hello.txt").stdout == text


def test_write_bytes_read_bytes(capsule):
    data = bytes(range(256)) * 64 + os.urandom(4096)
    capsule.files.write("/tmp/blob.bin", data)
    assert capsule.files.read_bytes("/tmp/blob.bin") == data
    r = capsule.commands.run("wc -c < /tmp/blob.bin")
    assert int(r.stdout.strip()) == len(data)


def test_write_empty_file(capsule):
    capsule.files.write("/tmp/empty", b"")
    assert capsule.files.read_bytes("/tmp/empty") == b""
    assert capsule.files.exists("/tmp/empty")


def test_write_overwrites_and_creates_parents(capsule):
    path = "/tmp/deep/er/still/file.txt"
    capsule.files.write(path, "one, longer content")
    capsule.files.write(path, "two")
    assert capsule.files.read(path) == "two"
    assert capsule.files.exists("/tmp/deep/er/still")


def test_write_larger_file(capsule):
    data = os.urandom(8 * 1024 * 1024 + 17)
    capsule.files.write("/tmp/big.bin", data)
    assert capsule.files.read_bytes("/tmp/big.bin") == data


def test_read_file_written_by_command(capsule):
    capsule.commands.run("printf 'from shell' > /tmp/sh.txt")
    assert capsule.files.read("/tmp/sh.txt") == "from shell"


def test_read_missing_is_not_found(capsule):
    with pytest.raises(WrennNotFoundError):
        capsule.files.read("/tmp/does/not/exist")
    with pytest.raises(WrennNotFoundError):
        capsule.files.read_bytes("/tmp/nope.bin")


def test_read_directory_is_bad_request(capsule):
    with pytest.raises(WrennValidationError):
        capsule.files.read("/tmp")


def test_list_depth(capsule):
    capsule.files.write("/tmp/tree/a/b/c.txt", "c")
    capsule.files.write("/tmp/tree/top.txt", "12345")

    d1 = {e.path: e for e in capsule.files.list("/tmp/tree")}
    assert set(d1) == {"/tmp/tree/a", "/tmp/tree/top.txt"}, d1
    top = d1["/tmp/tree/top.txt"]
    assert top.name == "top.txt"
    assert top.type is not None and top.type.value == "file"
    assert top.size == 5
    assert isinstance(top.mode, int) and top.mode & 0o777 == top.mode & 0o7777
    assert top.mode & 0o400, oct(top.mode)
    assert top.permissions and top.permissions.startswith("-"), top.permissions
    assert isinstance(top.modified_at, int) and top.modified_at > 1_600_000_000
    a = d1["/tmp/tree/a"]
    assert a.type.value == "directory"
    assert a.permissions.startswith("d")

    d2 = {e.path for e in capsule.files.list("/tmp/tree", depth=2)}
    assert d2 == {"/tmp/tree/a", "/tmp/tree/a/b", "/tmp/tree/top.txt"}, d2
    d3 = {e.path for e in capsule.files.list("/tmp/tree", depth=3)}
    assert d3 == d2 | {"/tmp/tree/a/b/c.txt"}, d3
    # depth 0 is treated as 1 (§8.5).
    d0 = {e.path for e in capsule.files.list("/tmp/tree", depth=0)}
    assert d0 == set(d1), d0


def test_list_empty_dir_is_empty_list(capsule):
    capsule.files.make_dir("/tmp/empty-dir")
    assert capsule.files.list("/tmp/empty-dir") == []


def test_list_missing_is_not_found(capsule):
    with pytest.raises(WrennNotFoundError):
        capsule.files.list("/tmp/no-such-dir")


def test_list_a_file_is_bad_request(capsule):
    capsule.files.write("/tmp/plain", "x")
    with pytest.raises(WrennValidationError):
        capsule.files.list("/tmp/plain")


def test_list_symlink(capsule):
    capsule.files.write("/tmp/ln/target.txt", "t")
    capsule.commands.run("ln -s /tmp/ln/target.txt /tmp/ln/link")
    entries = {e.name: e for e in capsule.files.list("/tmp/ln")}
    link = entries["link"]
    assert link.path == "/tmp/ln/link"
    assert link.symlink_target == "/tmp/ln/target.txt", link


def test_exists(capsule):
    capsule.files.write("/tmp/exists.txt", "x")
    assert capsule.files.exists("/tmp/exists.txt") is True
    assert capsule.files.exists("/tmp") is True
    assert capsule.files.exists("/tmp/missing.txt") is False
    assert capsule.files.exists("/tmp/missing-dir/missing.txt") is False


def test_make_dir_idempotent(capsule):
    entry = capsule.files.make_dir("/tmp/newdir/sub")
    assert entry.type.value == "directory"
    assert entry.name == "sub"
    assert entry.path == "/tmp/newdir/sub"
    assert capsule.files.exists("/tmp/newdir/sub")
    # Second call: server answers 409 conflict, the SDK lists the parent and returns it.
    again = capsule.files.make_dir("/tmp/newdir/sub")
    assert again.type.value == "directory"
    assert again.path == "/tmp/newdir/sub"
    r = capsule.commands.run("test -d /tmp/newdir/sub && echo dir")
    assert r.stdout == "dir\n"


def test_make_dir_over_file_is_bad_request(capsule):
    capsule.files.write("/tmp/a-file", "x")
    with pytest.raises(WrennValidationError):
        capsule.files.make_dir("/tmp/a-file")


def test_remove_file_and_dir(capsule):
    capsule.files.write("/tmp/rm/one.txt", "1")
    capsule.files.write("/tmp/rm/sub/two.txt", "2")
    capsule.files.remove("/tmp/rm/one.txt")
    assert not capsule.files.exists("/tmp/rm/one.txt")
    assert capsule.files.exists("/tmp/rm/sub/two.txt")
    capsule.files.remove("/tmp/rm")
    assert not capsule.files.exists("/tmp/rm")
    with pytest.raises(WrennNotFoundError):
        capsule.files.remove("/tmp/rm")


def test_files_are_per_capsule(make_capsule):
    a = make_capsule()
    b = make_capsule()
    a.files.write("/tmp/only-in-a", "a")
    assert not b.files.exists("/tmp/only-in-a")


@pytest.mark.parametrize(
    "path",
    ["/../../../../tmp/wrenn-e2e-escape-{id}", "/tmp/link-to-root/tmp/wrenn-e2e-escape-{id}"],
    ids=["dotdot", "symlink"],
)
def test_paths_stay_inside_the_capsule(capsule, path):
    """Guest paths (with `..` or through guest symlinks) must never reach the host."""
    capsule.commands.run("ln -s / /tmp/link-to-root")
    path = path.format(id=capsule.capsule_id)
    host_path = f"/tmp/wrenn-e2e-escape-{capsule.capsule_id}"
    try:
        capsule.files.write(path, "inside")
        assert not os.path.exists(host_path), f"capsule write escaped to the host: {host_path}"
        assert capsule.files.read(f"/tmp/wrenn-e2e-escape-{capsule.capsule_id}") == "inside"
    finally:
        if os.path.exists(host_path):
            os.unlink(host_path)
