"""The claim protocol's edges, each pinned (issue 22, section 2): who owns a token, when an owner
is dead, when a claim may be broken, and that a breaker only ever removes the file it judged."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from llem import claims
from llem.claims import (
    _ASIDE,
    _BREAK,
    BREAK_TOKEN_STALE_S,
    Claim,
    ClaimBoard,
    FileMutex,
    Owner,
    _take,
    age_s,
    break_claim,
    break_if_stale,
    observe,
    owner_token,
)

HOST = socket.gethostname()


def _age(path: Path, seconds: float) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old))


def _dead_pid() -> int:
    pid = 2**22 - 7
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid -= 1


# --- tokens ------------------------------------------------------------------------------


def test_a_token_names_its_worker_host_pid_boot_and_start():
    owner = Owner.parse("a@b@node-1:4242:0123456789ab:98765:cafe")
    assert owner == Owner("a@b", "node-1", 4242, "0123456789ab", "98765")  # the last @ splits
    assert Owner.parse("w@node-1:12:cafe") == Owner("w", "node-1", 12, "-", "-")
    assert Owner.parse(" w@node-1:12:cafe \n") == Owner("w", "node-1", 12)  # as read from a file
    for bad in ("w@node-1:12\n:cafe", "w@:12:cafe", "w@node:12:a:b:c:d", "w@node:12:a:b", "node:12:cafe", None):
        assert Owner.parse(bad) is None


def test_the_boot_id_and_the_process_start_come_from_proc(monkeypatch: pytest.MonkeyPatch):
    boot = Path("/proc/sys/kernel/random/boot_id")
    if boot.exists():
        assert claims._boot_id() == boot.read_text().strip().replace("-", "")[:12]
        assert len(claims._boot_id()) == 12

    class FakePath:
        text: str | None = None

        def __init__(self, name: str) -> None:
            self.name = name

        def read_text(self) -> str:
            if FakePath.text is None:
                raise OSError("no /proc here")
            return FakePath.text

    monkeypatch.setattr(claims, "Path", FakePath)
    assert claims._boot_id() == "-"
    assert claims._proc_stat(7) == [] and claims._process_start(7) == "-"
    # A command name may hold ") ": the fields start after the last one. Field 22 of stat (the
    # start time) is the 20th after the name.
    fields = ["S", *[str(n) for n in range(1, 19)], "777", "x"]
    FakePath.text = "7 (a) b) " + " ".join(fields)
    assert claims._proc_stat(7) == fields
    assert claims._process_start(7) == "777"
    FakePath.text = "7 (w) " + " ".join(fields[:19])  # 19 fields: no start time
    assert claims._process_start(7) == "-"
    FakePath.text = "1a-2b-3c-4d-5e6f-7a8b\n"
    assert claims._boot_id() == "1a2b3c4d5e6f"


# --- a dead owner ------------------------------------------------------------------------


def _alive_stat(start: str = "500", state: str = "S", n: int = 22) -> list[str]:
    return [state, *["0"] * 18, start, *["0"] * (n - 20)][:n]


@pytest.mark.parametrize(
    ("owner_boot", "boot_now", "dead"),
    [
        ("aaaaaaaaaaaa", "bbbbbbbbbbbb", True),  # an earlier boot of this host
        ("aaaaaaaaaaaa", "aaaaaaaaaaaa", False),
        ("aaaaaaaaaaaa", "-", False),  # this host's boot id unknown: cannot say
        ("-", "bbbbbbbbbbbb", False),  # an earlier llem's token: no boot id in it
    ],
)
def test_an_owner_of_an_earlier_boot_is_dead(monkeypatch: pytest.MonkeyPatch, owner_boot, boot_now, dead):
    monkeypatch.setattr(claims, "_boot_id", lambda: boot_now)
    monkeypatch.setattr(claims, "_proc_stat", lambda pid: _alive_stat())
    assert Owner("w", HOST, os.getpid(), owner_boot, "500").dead() is dead


@pytest.mark.parametrize(
    ("stat", "start", "dead"),
    [
        (_alive_stat(state="Z"), "500", True),  # killed, not yet reaped
        (_alive_stat(start="501"), "500", True),  # the pid was reused by a later process
        (_alive_stat(), "500", False),
        (_alive_stat(start="501"), "-", False),  # an earlier llem's token: no start time
        (_alive_stat(start="501", n=20), "500", True),  # 20 fields: the start time is there
        (_alive_stat(n=19), "500", False),  # 19 fields: /proc cannot say
        ([], "500", False),
    ],
)
def test_an_owner_whose_process_is_gone_or_another_is_dead(monkeypatch: pytest.MonkeyPatch, stat, start, dead):
    monkeypatch.setattr(claims, "_boot_id", lambda: "aaaaaaaaaaaa")
    monkeypatch.setattr(claims, "_proc_stat", lambda pid: stat)
    assert Owner("w", HOST, os.getpid(), "aaaaaaaaaaaa", start).dead() is dead


def test_an_owner_on_another_host_or_of_a_gone_pid():
    assert not Owner("w", HOST + "-elsewhere", _dead_pid()).dead()  # judged by staleness alone
    assert Owner("w", HOST, _dead_pid()).dead()
    seen = claims.Seen((1, 2), f"w@{HOST}:{_dead_pid()}:cafe", 1.0)
    assert seen.why_free(300.0) == "dead"


# --- looking at a claim ------------------------------------------------------------------


def test_observe_reads_the_file_it_opened_and_its_age(tmp_path: Path):
    path = tmp_path / "claim"
    path.write_text("x" * 5000)
    _age(path, 100.0)
    seen = observe(path)
    assert seen is not None
    stat = os.stat(path)
    assert seen.inode == (stat.st_dev, stat.st_ino)
    assert seen.content == "x" * 4096  # at most 4 KiB of it
    assert seen.age_s == pytest.approx(100.0, abs=2.0)
    assert age_s(path) == pytest.approx(100.0, abs=2.0)
    assert observe(tmp_path / "none") is None and age_s(tmp_path / "none") is None


# --- breaking only the file judged -------------------------------------------------------


def test_take_removes_the_file_seen_and_puts_back_anything_else(tmp_path: Path):
    path = tmp_path / "e001-c1"
    assert not _take(path, claims.Seen((0, 0), "", 0.0))  # nothing there
    path.write_text("w@h:1:cafe\n")
    seen = observe(path)
    assert seen is not None
    assert _take(path, seen) and not path.exists()
    # The same content in a new file (its owner made it anew): not the file seen.
    path.write_text("w@h:1:cafe\n")
    old = observe(path)
    assert old is not None
    path.unlink()
    path.write_text("w@h:1:cafe\n")
    new = observe(path)
    assert new is not None
    if new.inode != old.inode:  # a file system may hand the freed inode out again
        assert not _take(path, old)
        assert path.read_text() == "w@h:1:cafe\n"
    # Other content: put back.
    assert not _take(path, claims.Seen(new.inode, "other@h:2:beef\n", 0.0))
    assert path.read_text() == "w@h:1:cafe\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e001-c1"]  # nothing left aside


def test_a_claim_replaced_since_it_was_judged_is_not_broken(tmp_path: Path):
    path = tmp_path / "e001-c1"
    path.write_text("w@elsewhere:1:cafe\n")
    _age(path, 1000.0)
    seen = observe(path)
    assert seen is not None and seen.why_free(300.0) == "stale"
    keep = tmp_path / "keep"
    keep.write_text("w@elsewhere:1:cafe\n")  # the same content, another file, just as old
    _age(keep, 1000.0)
    os.replace(keep, path)
    assert break_claim(path, seen, 300.0) is None
    assert path.exists()


def test_a_break_token_left_by_a_dead_breaker_is_taken_over(tmp_path: Path):
    path = tmp_path / "e001-c1"
    path.write_text("w@elsewhere:1:cafe\n")
    _age(path, 1000.0)
    seen = observe(path)
    assert seen is not None
    token = path.with_name(f"{path.name}{_BREAK}{seen.key}")
    token.write_text("breaker@elsewhere:2:beef\n")  # another host's breaker, never finished
    assert break_claim(path, seen, 300.0) is None  # a live breaker may still be at work
    _age(token, BREAK_TOKEN_STALE_S + 1)
    assert break_claim(path, seen, 300.0) == "stale"
    assert not path.exists() and not token.exists()


def test_break_if_stale_breaks_a_stale_claim_only(tmp_path: Path):
    path = tmp_path / "lock"
    assert not break_if_stale(path, 30.0)
    path.write_text(owner_token() + "\n")
    assert not break_if_stale(path, 30.0) and path.exists()  # fresh and ours
    _age(path, 31.0)
    assert break_if_stale(path, 30.0) and not path.exists()


# --- claiming ----------------------------------------------------------------------------


def test_a_claim_carries_its_worker_and_run(tmp_path: Path):
    board = ClaimBoard(tmp_path, worker="w7", stale_after_s=60)
    claim = board.claim("e001-c1")
    assert claim is not None
    assert (claim.run_id, claim.broke, claim.path) == ("e001-c1", None, tmp_path / "claims" / "e001-c1")
    assert claim.token.startswith(f"w7@{HOST}:{os.getpid()}:")
    assert claim.path.read_text() == claim.token + "\n"


def test_a_claim_released_between_two_looks_is_claimed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    board = ClaimBoard(tmp_path, worker="w", stale_after_s=60)
    board.dir.mkdir()
    board.path("e001-c1").write_text("other@elsewhere:1:cafe\n")

    def vanished(path: Path) -> None:
        path.unlink()  # its owner released it just now

    monkeypatch.setattr(claims, "observe", vanished)
    claim = board.claim("e001-c1")
    assert claim is not None and claim.run_id == "e001-c1" and claim.broke is None
    assert claim.path == board.path("e001-c1") and claim.path.read_text() == claim.token + "\n"


def test_a_broken_claim_is_claimed_for_its_run(tmp_path: Path):
    board = ClaimBoard(tmp_path, worker="w", stale_after_s=60)
    board.dir.mkdir()
    board.path("e003-c2").write_text("other@elsewhere:1:cafe\n")
    _age(board.path("e003-c2"), 61.0)
    claim = board.claim("e003-c2")
    assert claim is not None and (claim.run_id, claim.broke) == ("e003-c2", "stale")
    assert claim.held()


def test_a_claim_whose_study_directory_vanished_is_made_again(tmp_path: Path):
    board = ClaimBoard(tmp_path / "study", worker="w", stale_after_s=60)
    claim = board.claim("e001-c1")
    assert claim is not None
    claim.path.unlink()  # the file alone
    assert claim.held() and claim.path.read_text() == claim.token + "\n"
    import shutil

    shutil.rmtree(tmp_path / "study")  # the whole study directory
    assert claim.held() and claim.path.read_text() == claim.token + "\n"
    other = Claim(claim.path, "e001-c1", "other@elsewhere:1:cafe")
    assert not other.held()  # made again by its owner: nobody else gets it back


def test_live_claims_leave_out_break_tokens_aside_files_and_hidden_ones(tmp_path: Path):
    board = ClaimBoard(tmp_path, worker="w", stale_after_s=60)
    board.dir.mkdir()
    token = f"w@{HOST}:{os.getpid()}:cafe"
    for name in (".hidden", "e001-c1", f"e001-c1{_BREAK}0123456789abcdef", f"e002-c1{_ASIDE}1234abcd", "e002-c1"):
        (board.dir / name).write_text(token + "\n")
    assert board.live_claims() == {
        "e001-c1": f"w@{HOST}:{os.getpid()} (refreshed 0 s ago)",
        "e002-c1": f"w@{HOST}:{os.getpid()} (refreshed 0 s ago)",
    }
    assert ClaimBoard(tmp_path / "none").live_claims() == {}


def test_a_mutex_held_by_a_live_owner_times_out_with_a_reason(tmp_path: Path):
    path = tmp_path / ".manifest.lock"
    path.write_text(f"w@{HOST}:{os.getpid()}:cafe\n")  # this live process, another token
    mutex = FileMutex(path, timeout_s=0.2)
    assert (FileMutex(path).stale_after_s, FileMutex(path).timeout_s) == (30.0, 120.0)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"\.manifest\.lock held for over 0 s"), mutex:
        pass
    assert time.monotonic() - started < 5.0
    _age(path, 31.0)  # stale now: broken and taken
    with FileMutex(path):
        assert path.read_text().startswith(f"llem@{HOST}:{os.getpid()}:")
    assert not path.exists()


# --- the edges a second mutation run found -------------------------------------------------


def test_this_processes_start_time_is_field_22_of_its_stat():
    stat = Path(f"/proc/{os.getpid()}/stat")
    if not stat.exists():
        pytest.skip("no /proc on this system")
    fields = stat.read_text().rsplit(")", 1)[1].split()
    assert claims._process_start(os.getpid()) == fields[19]  # field 22 overall: state is field 3


def test_a_stat_of_exactly_twenty_fields_has_its_start_time(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(claims, "_proc_stat", lambda pid: ["S", *["0"] * 18, "4242"])
    assert claims._process_start(1) == "4242"


def test_a_token_has_twelve_random_hex_digits_and_no_newline_anywhere():
    rand = owner_token("w").rsplit(":", 1)[1]
    assert len(rand) == 12 and int(rand, 16) >= 0
    assert Owner.parse("w@node-1:12:ca\nfe") is None  # a newline inside: not a token


def test_claim_files_are_group_writable(tmp_path: Path):
    old = os.umask(0)
    try:
        assert claims.create_exclusive(tmp_path / "c", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "c").stat().st_mode & 0o777 == 0o664
    assert not claims.create_exclusive(tmp_path / "c", "y") and (tmp_path / "c").read_text() == "x"


def test_take_puts_back_a_claim_even_when_its_owner_made_it_anew_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    path = tmp_path / "e001-c1"
    path.write_text("w@h:1:cafe\n")
    seen = observe(path)
    assert seen is not None
    real = claims.observe

    def renewed(p: Path):
        path.write_text("w@h:1:beef\n")  # its owner re-made it after the rename
        got = real(p)
        return claims.Seen(got.inode, "someone else's\n", got.age_s) if got else None

    monkeypatch.setattr(claims, "observe", renewed)
    assert not _take(path, seen)
    assert path.read_text() == "w@h:1:beef\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e001-c1"]


def test_take_survives_the_aside_file_vanishing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "e001-c1"
    path.write_text("w@h:1:cafe\n")
    seen = observe(path)
    assert seen is not None

    def gone(p: Path) -> None:
        p.unlink()  # someone removed the renamed file

    monkeypatch.setattr(claims, "observe", gone)
    assert not _take(path, seen)
    path.write_text("w@h:1:cafe\n")
    seen = observe(path)
    assert seen is not None

    def judged_then_gone(p: Path):
        p.unlink()
        return seen  # it was the file judged, and it is gone already

    monkeypatch.setattr(claims, "observe", judged_then_gone)
    assert _take(path, seen)
    assert list(tmp_path.iterdir()) == []


def test_take_checks_the_inode_not_only_the_content(tmp_path: Path):
    path = tmp_path / "e001-c1"
    path.write_text("w@h:1:cafe\n")
    old = observe(path)
    assert old is not None
    os.replace(path, tmp_path / "kept")  # kept alive: its inode cannot be handed out again
    path.write_text("w@h:1:cafe\n")
    assert not _take(path, old)
    assert path.read_text() == "w@h:1:cafe\n"


def test_a_dead_breakers_token_is_taken_over_at_once_and_names_its_breaker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    path = tmp_path / "e001-c1"
    path.write_text("w@elsewhere:1:cafe\n")
    _age(path, 1000.0)
    seen = observe(path)
    assert seen is not None
    token = path.with_name(f"{path.name}{_BREAK}{seen.key}")
    token.write_text(f"breaker@{HOST}:{_dead_pid()}:beef\n")  # fresh, but its writer is gone
    tokens_seen: list[str] = []
    real = claims.observe

    def watching(p: Path):
        if p == path:
            tokens_seen.append(token.read_text())
        return real(p)

    monkeypatch.setattr(claims, "observe", watching)
    assert break_claim(path, seen, 300.0) == "stale"
    (content,) = tokens_seen  # the token, while the claim was judged again under it
    assert Owner.parse(content) is not None and content.endswith("\n")
    assert Owner.parse(content).pid == os.getpid()  # type: ignore[union-attr]


def test_a_claim_that_cannot_be_made_again_is_not_held(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    board = ClaimBoard(tmp_path, worker="w", stale_after_s=60)
    claim = board.claim("e001-c1")
    assert claim is not None
    claim.path.unlink()

    def full(path: Path, content: str) -> bool:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(claims, "create_exclusive", full)
    assert not claim.held()


def test_a_claim_taken_by_another_between_two_looks_is_not_ours(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    board = ClaimBoard(tmp_path, worker="w", stale_after_s=60)
    board.dir.mkdir()
    board.path("e001-c1").write_text("other@elsewhere:1:cafe\n")

    def raced(path: Path) -> None:
        path.unlink()
        path.write_text("third@elsewhere:2:beef\n")  # released, and claimed by a third worker first

    monkeypatch.setattr(claims, "observe", raced)
    assert board.claim("e001-c1") is None
    assert board.path("e001-c1").read_text() == "third@elsewhere:2:beef\n"


def test_a_breakers_token_names_it_so_another_can_tell_it_died(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "e001-c1"
    path.write_text("w@elsewhere:1:cafe\n")
    _age(path, 1000.0)
    seen = observe(path)
    assert seen is not None
    token = path.with_name(f"{path.name}{_BREAK}{seen.key}")
    contents: list[str] = []
    real = claims.observe

    def watching(p: Path):
        if p == path:
            contents.append(token.read_text())
        return real(p)

    monkeypatch.setattr(claims, "observe", watching)
    assert break_claim(path, seen, 300.0) == "stale"
    (content,) = contents
    owner = Owner.parse(content)
    assert owner is not None and owner.pid == os.getpid() and content.endswith("\n")
    assert not token.exists()
