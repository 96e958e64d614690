"""Identity: kept across restarts, one daemon per data dir, twins refused."""

from __future__ import annotations

import errno
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from meshgpu.daemon.auth import Authenticator, Channel, MeshKey
from meshgpu.daemon.identity import (
    INCARNATION_RESERVE,
    DataDirLock,
    DuplicateIdentityGuard,
    IdentityStore,
    NodeIdentity,
    twin_message,
    write_text_durably,
)
from meshgpu.errors import (
    DataDirLockedError,
    DuplicateIdentityError,
    IdentityError,
    StorageError,
)


def test_id_is_made_once_and_incarnation_rises(tmp_path: Path) -> None:
    first = IdentityStore(tmp_path).start()
    second = IdentityStore(tmp_path).start(name=first.node_id)  # the same name: fine
    assert second.node_id == first.node_id
    assert second.incarnation == first.incarnation + 1
    assert second.dir_token == first.dir_token != ""
    IdentityStore(tmp_path).save(NodeIdentity(first.node_id, 41))
    assert IdentityStore(tmp_path).start().incarnation == 42


def test_a_start_reserves_incarnations_ahead(tmp_path: Path) -> None:
    """What is stored is the run's incarnation plus the reserve: a restart after
    SIGKILL starts above every incarnation the run could announce without a write."""
    first = IdentityStore(tmp_path).start(reserve=INCARNATION_RESERVE)
    stored = IdentityStore(tmp_path).load()
    assert stored is not None and stored.incarnation == first.incarnation + INCARNATION_RESERVE
    assert IdentityStore(tmp_path).start().incarnation == stored.incarnation + 1


def test_name_is_used_the_first_time(tmp_path: Path) -> None:
    assert IdentityStore(tmp_path).start(name="gpu-box-3").node_id == "gpu-box-3"


@pytest.mark.parametrize(
    ("name", "complaint"),
    [("n" * 65, "is 65 bytes; a node id has 1 to 64 bytes"),
     ("é" * 33, "is 66 bytes"),
     ("gpu\tbox", "control character")],
)  # fmt: skip
def test_a_name_unfit_for_a_node_id_is_refused_before_it_is_stored(
    tmp_path: Path, name: str, complaint: str
) -> None:
    # It was stored, then refused by the envelope ("sender id ... must be 1 to 64 bytes"),
    # and the data dir refused every later start as belonging to that name.
    with pytest.raises(IdentityError, match=complaint):
        IdentityStore(tmp_path).start(name=name)
    assert not (tmp_path / "identity.json").exists()
    assert IdentityStore(tmp_path).start(name="é" * 32).node_id == "é" * 32


def test_a_name_that_disagrees_with_the_stored_id_is_refused_with_both(tmp_path: Path) -> None:
    IdentityStore(tmp_path).start(name="a")
    with pytest.raises(IdentityError) as refused:
        IdentityStore(tmp_path).start(name="zz")
    message = str(refused.value)
    assert "belongs to node 'a'" in message and "--name says 'zz'" in message
    assert "leave out --name" in message and "--data-dir" in message
    assert IdentityStore(tmp_path).start().node_id == "a"  # nothing was changed


def test_an_identity_from_before_dir_tokens_gets_one_and_keeps_it(tmp_path: Path) -> None:
    (tmp_path / "identity.json").write_text('{"node_id": "old", "incarnation": 3}')
    first = IdentityStore(tmp_path).start()
    assert first.node_id == "old" and first.incarnation == 4 and first.dir_token
    assert IdentityStore(tmp_path).start().dir_token == first.dir_token


def test_the_twin_message_tells_a_copy_from_a_second_node_of_the_same_name() -> None:
    twin = ("10.0.0.7", 7946)
    copied = twin_message("a", Path("/data/b"), "t1", twin, "t1")
    assert "this data dir (/data/b) is a copy of that node's" in copied
    assert "of its own" not in copied
    named = twin_message("a", Path("/data/b"), "t1", twin, "t2")
    assert "node 'a' at 10.0.0.7:7946 has a data dir of its own" in named
    assert "another --name" in named and "copy" not in named
    unknown = twin_message("a", Path("/data/b"), "t1", twin, None)  # an older twin
    assert "either" in unknown and "copy" in unknown and "of its own" in unknown


def test_corrupt_identity_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "identity.json").write_text("{not json")
    with pytest.raises(StorageError, match="delete it"):
        IdentityStore(tmp_path).start()


def test_second_daemon_on_same_dir_is_refused_with_pid(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time; from pathlib import Path; "
                "from meshgpu.daemon.identity import DataDirLock; "
                f"lock = DataDirLock(Path({str(tmp_path)!r})); lock.acquire(); "
                "print('held', flush=True); sys.stdin.read()"
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(DataDirLockedError, match=f"pid {holder.pid}"):
            DataDirLock(tmp_path).acquire()
    finally:
        holder.communicate("", timeout=10)
    with DataDirLock(tmp_path):  # released when its holder exited
        pass


def test_a_data_dir_that_cannot_be_written_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    # A read-only mount fails the same way (EROFS) as this path under a file (ENOTDIR).
    (tmp_path / "a-file").write_text("")
    with pytest.raises(StorageError, match=r"cannot use data dir .*a-file/data.*--data-dir"):
        DataDirLock(tmp_path / "a-file" / "data").acquire()


def test_a_data_dir_error_without_a_file_name_names_no_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An OSError with no filename (EIO from the disk) printed "(None)" as the path."""

    def failing(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(Path, "mkdir", failing)
    with pytest.raises(StorageError) as refused:
        DataDirLock(tmp_path / "data").acquire()
    assert str(refused.value).startswith(
        f"cannot use data dir {tmp_path / 'data'}: Input/output error; the daemon writes"
    )


def test_copied_data_dir_twin_is_refused_by_the_newcomer(tmp_path: Path) -> None:
    original = tmp_path / "original"
    identity = IdentityStore(original).start()
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    twin_identity = IdentityStore(copy).start()
    assert twin_identity.node_id == identity.node_id

    key = MeshKey.generate()
    old_node, new_node = Authenticator(key, identity.node_id), Authenticator(key, identity.node_id)
    old_sealer = old_node.new_session(Channel.DATAGRAM)
    new_sealer = new_node.new_session(Channel.DATAGRAM)

    newcomer = DuplicateIdentityGuard(identity.node_id, started=100.0, grace=15.0)
    heard = new_node.open(old_sealer.seal(b"gossip"), Channel.DATAGRAM)
    with pytest.raises(DuplicateIdentityError, match=r"10\.0\.0\.7:7946 uses this node's id"):
        newcomer.observe(heard.sender, heard.from_self, ("10.0.0.7", 7946), now=101.0)

    established = DuplicateIdentityGuard(identity.node_id, started=0.0, grace=15.0)
    heard = old_node.open(new_sealer.seal(b"gossip"), Channel.DATAGRAM)
    message = established.observe(heard.sender, heard.from_self, ("10.0.0.8", 7946), now=500.0)
    assert message is not None and "10.0.0.8:7946" in message
    assert established.sightings == 1


def test_own_datagrams_and_other_ids_are_not_twins() -> None:
    guard = DuplicateIdentityGuard("n-1", started=0.0)
    assert guard.observe("n-1", True, ("127.0.0.1", 1), now=1.0) is None
    assert guard.observe("n-2", False, ("127.0.0.1", 1), now=1.0) is None
    assert guard.sightings == 0


def test_a_durable_write_with_a_mode_is_never_readable_by_others(tmp_path: Path) -> None:
    import stat

    target = tmp_path / "secret.json"
    scratch = target.with_name(target.name + ".tmp")
    scratch.write_text("left by a crash")
    scratch.chmod(0o644)
    write_text_durably(target, "{}\n", mode=0o600)
    assert target.read_text() == "{}\n" and not scratch.exists()
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    write_text_durably(target, "[]\n")  # without a mode: the umask's, as before
    assert target.read_text() == "[]\n"


async def test_a_daemon_writing_its_incarnation_keeps_its_data_dirs_token(tmp_path: Path) -> None:
    """The token tells a copied data dir from a second node of the same name (a copy
    has the same one): a refutation's write and the write at a stop keep it, or a copy
    made afterwards is told it is another node's data dir."""
    import trio

    from meshgpu.daemon.runtime import Daemon
    from tests.daemon.test_runtime import settings

    config = settings(tmp_path / "solo")
    token = IdentityStore(config.data_dir).start(name="solo").dir_token
    async with trio.open_nursery() as nursery:
        daemon: Daemon = await nursery.start(Daemon(config).run)
        # A refutation past the incarnations reserved at the start writes the file.
        assert daemon._save_incarnation(daemon.node.incarnation + INCARNATION_RESERVE + 5)
        stored = IdentityStore(config.data_dir).load()
        assert stored is not None and stored.dir_token == token
        daemon.request_stop()
    stored = IdentityStore(config.data_dir).load()
    assert stored is not None and stored.dir_token == token
