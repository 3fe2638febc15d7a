"""Tests of the key ring file: creation, permissions, races, rotation and reload."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from xiaohe.identity.server.clock import FakeClock, SystemClock
from xiaohe.identity.server.crypto.keyring import KeyRing, KeyRingError, UnknownKeyError

HOUR = 3600.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=1_800_000_000.0)


@pytest.fixture
def ring_path(tmp_path: Path) -> Path:
    return tmp_path / "keys" / "keyring.json"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _counting_source() -> Callable[[int], bytes]:
    """A deterministic randomness source: every call returns fresh, distinct bytes."""
    counter = itertools.count(1)

    def token_bytes(n: int) -> bytes:
        return next(counter).to_bytes(4, "big").rjust(n, b"\xaa")[:n]

    return token_bytes


# -- creation and permissions ------------------------------------------------------


def test_create_writes_a_0600_file_with_all_keys(ring_path: Path, clock: FakeClock) -> None:
    ring = KeyRing.load_or_create(ring_path, clock)

    assert ring_path.is_file()
    assert _mode(ring_path) == 0o600
    doc = json.loads(ring_path.read_text())
    assert doc["version"] == 1
    assert doc["active_master_key_id"] == ring.active_master_key.id
    assert ring.active_master_key.id.startswith("mk-")
    assert len(ring.active_master_key.id) == len("mk-") + 8
    assert len(ring.active_master_key.key) == 32
    assert ring.active_master_key.created_at == clock.now()
    assert ring.active_signing_key.kid.startswith("sk-")
    assert len(ring.active_signing_key.seed) == 32
    assert ring.active_signing_key.retired_at is None
    keys = {ring.blind_index_key, ring.code_hmac_key, ring.audit_pseudonym_key}
    assert len(keys) == 3
    assert all(len(k) == 32 for k in keys)


def test_create_is_0600_even_with_a_permissive_umask(ring_path: Path, clock: FakeClock) -> None:
    old = os.umask(0)
    try:
        KeyRing.load_or_create(ring_path, clock)
    finally:
        os.umask(old)
    assert _mode(ring_path) == 0o600


def test_second_load_returns_the_same_keys(ring_path: Path, clock: FakeClock) -> None:
    first = KeyRing.load_or_create(ring_path, clock)
    second = KeyRing.load_or_create(ring_path, clock)

    assert second.active_master_key == first.active_master_key
    assert second.active_signing_key == first.active_signing_key
    assert second.blind_index_key == first.blind_index_key
    assert second.code_hmac_key == first.code_hmac_key
    assert second.audit_pseudonym_key == first.audit_pseudonym_key


def test_injected_randomness_is_used(ring_path: Path, clock: FakeClock) -> None:
    ring = KeyRing.load_or_create(ring_path, clock, token_bytes=_counting_source())

    assert ring.active_master_key.id == "mk-00000001"
    assert ring.active_master_key.key == b"\xaa" * 28 + (2).to_bytes(4, "big")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_refuses_a_file_accessible_by_group_or_others(
    ring_path: Path, clock: FakeClock, mode: int
) -> None:
    KeyRing.load_or_create(ring_path, clock)
    ring_path.chmod(mode)

    with pytest.raises(KeyRingError, match="group or others"):
        KeyRing.load_or_create(ring_path, clock)


def test_reload_also_refuses_an_insecure_file(ring_path: Path, clock: FakeClock) -> None:
    ring = KeyRing.load_or_create(ring_path, clock)
    ring_path.chmod(0o644)

    with pytest.raises(KeyRingError, match="group or others"):
        ring.reload()


def test_malformed_file_is_refused_without_echoing_key_material(
    ring_path: Path, clock: FakeClock
) -> None:
    ring = KeyRing.load_or_create(ring_path, clock)
    doc = json.loads(ring_path.read_text())
    secret_b64 = doc["blind_index_key"]
    doc["code_hmac_key"] = "not base64!!"
    ring_path.write_text(json.dumps(doc))

    with pytest.raises(KeyRingError, match="code_hmac_key") as info:
        KeyRing.load_or_create(ring_path, clock)
    assert secret_b64 not in str(info.value)
    assert ring.active_master_key.key.hex() not in str(info.value)


def test_file_that_is_not_a_key_ring_is_refused(ring_path: Path, clock: FakeClock) -> None:
    ring_path.parent.mkdir(parents=True)
    fd = os.open(ring_path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b'{"hello": "world"}')
    os.close(fd)

    with pytest.raises(KeyRingError, match="not a Xiaohe Identity key ring"):
        KeyRing.load_or_create(ring_path, clock)


def test_reprs_do_not_show_key_material(ring_path: Path, clock: FakeClock) -> None:
    ring = KeyRing.load_or_create(ring_path, clock)
    master = ring.active_master_key
    signing = ring.active_signing_key

    assert master.key.hex() not in repr(master)
    assert repr(master.key) not in repr(master)
    assert repr(signing.seed) not in repr(signing)
    assert master.id in repr(master)


# -- concurrent creation -------------------------------------------------------------


def _create_in_child(path: str, barrier: object, results: object) -> None:
    barrier.wait()  # type: ignore[attr-defined]
    ring = KeyRing.load_or_create(Path(path), SystemClock())
    results.put(  # type: ignore[attr-defined]
        (
            ring.active_master_key.id,
            ring.active_master_key.key,
            ring.active_signing_key.seed,
            ring.blind_index_key,
        )
    )


def test_concurrent_creation_yields_one_ring(ring_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    results = ctx.Queue()
    processes = [
        ctx.Process(target=_create_in_child, args=(str(ring_path), barrier, results))
        for _ in range(4)
    ]
    for p in processes:
        p.start()
    seen = [results.get(timeout=30) for _ in processes]
    for p in processes:
        p.join(timeout=30)
        assert p.exitcode == 0

    assert len(set(seen)) == 1
    on_disk = KeyRing.load_or_create(ring_path, SystemClock())
    assert seen[0] == (
        on_disk.active_master_key.id,
        on_disk.active_master_key.key,
        on_disk.active_signing_key.seed,
        on_disk.blind_index_key,
    )
    assert _mode(ring_path) == 0o600
    # No temporary files are left behind.
    assert sorted(p.name for p in ring_path.parent.iterdir()) == ["keyring.json"]


# -- master keys ---------------------------------------------------------------------


def test_rotate_master_key_keeps_old_keys_and_persists(ring_path: Path, clock: FakeClock) -> None:
    ring = KeyRing.load_or_create(ring_path, clock)
    old = ring.active_master_key
    blind = ring.blind_index_key
    clock.advance(10)

    new = ring.rotate_master_key()

    assert new.id != old.id
    assert new.key != old.key
    assert new.created_at == clock.now()
    assert ring.active_master_key == new
    assert ring.master_key(old.id) == old
    assert ring.blind_index_key == blind  # never rotated with the master key
    assert _mode(ring_path) == 0o600

    reloaded = KeyRing.load_or_create(ring_path, clock)
    assert reloaded.active_master_key == new
    assert reloaded.master_key(old.id) == old
    assert [k.id for k in reloaded.master_keys] == [old.id, new.id]


def test_unknown_master_key_raises_a_key_error(ring_path: Path, clock: FakeClock) -> None:
    ring = KeyRing.load_or_create(ring_path, clock)

    with pytest.raises(UnknownKeyError):
        ring.master_key("mk-00000000")
    with pytest.raises(KeyError):
        ring.master_key("mk-00000000")


def test_reload_sees_rotation_by_another_process(ring_path: Path, clock: FakeClock) -> None:
    worker = KeyRing.load_or_create(ring_path, clock)
    cli = KeyRing.load_or_create(ring_path, clock)
    new = cli.rotate_master_key()

    with pytest.raises(UnknownKeyError):
        worker.master_key(new.id)
    worker.reload()
    assert worker.active_master_key == new


def test_concurrent_rotations_from_stale_rings_lose_no_key(
    ring_path: Path, clock: FakeClock
) -> None:
    first = KeyRing.load_or_create(ring_path, clock)
    second = KeyRing.load_or_create(ring_path, clock)  # does not know about first's rotation

    a = first.rotate_master_key()
    b = second.rotate_master_key()

    first.reload()
    ids = [k.id for k in first.master_keys]
    assert len(ids) == 3
    assert a.id in ids
    assert b.id in ids
    assert first.active_master_key == b


# -- signing keys ---------------------------------------------------------------------


def test_signing_key_public_key_matches_seed(ring_path: Path, clock: FakeClock) -> None:
    ring = KeyRing.load_or_create(ring_path, clock)
    key = ring.active_signing_key
    signature = key.private_key().sign(b"message")

    public = Ed25519PublicKey.from_public_bytes(ring.public_keys()[key.kid])
    public.verify(signature, b"message")  # raises if the key does not match
    assert len(ring.public_keys()[key.kid]) == 32


def test_signing_rotation_keeps_retired_key_for_its_window(
    ring_path: Path, clock: FakeClock
) -> None:
    ring = KeyRing.load_or_create(ring_path, clock)
    old = ring.active_signing_key
    clock.advance(100)

    new = ring.rotate_signing_key(keep_retired_for=HOUR)

    assert ring.active_signing_key == new
    assert new.kid != old.kid
    assert set(ring.public_keys()) == {old.kid, new.kid}
    assert [k.kid for k in ring.signing_keys] == [new.kid, old.kid]
    retired = ring.signing_key(old.kid)
    assert retired.retired_at == clock.now()
    assert retired.seed == old.seed

    clock.advance(HOUR - 1)
    assert set(ring.public_keys()) == {old.kid, new.kid}

    clock.advance(2)
    assert set(ring.public_keys()) == {new.kid}
    with pytest.raises(UnknownKeyError):
        ring.signing_key(old.kid)


def test_expired_retired_keys_are_dropped_from_the_file_on_next_rotation(
    ring_path: Path, clock: FakeClock
) -> None:
    ring = KeyRing.load_or_create(ring_path, clock)
    first = ring.active_signing_key
    second = ring.rotate_signing_key(keep_retired_for=HOUR)
    clock.advance(HOUR / 2)
    third = ring.rotate_signing_key(keep_retired_for=HOUR)

    kids_on_disk = [k["kid"] for k in json.loads(ring_path.read_text())["signing_keys"]]
    assert kids_on_disk == [first.kid, second.kid, third.kid]
    assert set(ring.public_keys()) == {first.kid, second.kid, third.kid}

    clock.advance(HOUR / 2 + 1)  # first's window is over, second's is not
    assert set(ring.public_keys()) == {second.kid, third.kid}
    fourth = ring.rotate_signing_key(keep_retired_for=HOUR)

    kids_on_disk = [k["kid"] for k in json.loads(ring_path.read_text())["signing_keys"]]
    assert kids_on_disk == [second.kid, third.kid, fourth.kid]


def test_prune_drops_expired_keys_from_the_file(ring_path: Path, clock: FakeClock) -> None:
    ring = KeyRing.load_or_create(ring_path, clock)
    old = ring.active_signing_key
    new = ring.rotate_signing_key(keep_retired_for=60)
    clock.advance(61)

    ring.prune_signing_keys()

    kids_on_disk = [k["kid"] for k in json.loads(ring_path.read_text())["signing_keys"]]
    assert kids_on_disk == [new.kid]
    assert old.kid not in ring.public_keys()


def test_a_staged_signing_key_is_published_but_signs_nothing_until_activated(
    ring_path: Path, clock: FakeClock
) -> None:
    """Staging adds the next key to the published set (JWKS, ValidateToken) and leaves the
    active key signing; staging again returns the same key; another process reads it; the
    next rotation activates exactly that key and retires the old one for its window."""
    ring = KeyRing.load_or_create(ring_path, clock)
    old = ring.active_signing_key
    staged = ring.rotate_signing_key(keep_retired_for=HOUR, activate=False)

    assert ring.active_signing_key == old
    assert ring.staged_signing_key == staged
    assert [k.kid for k in ring.signing_keys] == [old.kid, staged.kid]
    assert set(ring.public_keys()) == {old.kid, staged.kid}
    assert ring.rotate_signing_key(keep_retired_for=HOUR, activate=False) == staged
    other_process = KeyRing.load(ring_path, clock)
    assert other_process.staged_signing_key == staged

    clock.advance(300)
    active = ring.rotate_signing_key(keep_retired_for=HOUR)
    assert active.kid == staged.kid
    assert active.seed == staged.seed
    assert ring.staged_signing_key is None
    retired = ring.signing_key(old.kid)
    assert (retired.retired_at, retired.drop_after) == (clock.now(), clock.now() + HOUR)
    kids_on_disk = [k["kid"] for k in json.loads(ring_path.read_text())["signing_keys"]]
    assert kids_on_disk == [old.kid, staged.kid]


def test_a_ring_with_two_staged_signing_keys_is_refused(ring_path: Path, clock: FakeClock) -> None:
    """At most one key waits to sign: a file with two is damaged, not guessed at."""
    ring = KeyRing.load_or_create(ring_path, clock)
    staged = ring.rotate_signing_key(keep_retired_for=HOUR, activate=False)
    doc = json.loads(ring_path.read_text())
    twin = dict(next(k for k in doc["signing_keys"] if k["kid"] == staged.kid))
    twin["kid"] = staged.kid + "x"
    doc["signing_keys"].append(twin)
    ring_path.write_text(json.dumps(doc))
    with pytest.raises(KeyRingError, match="more than one signing key is staged"):
        KeyRing.load(ring_path, clock)


def test_negative_keep_window_is_rejected(ring_path: Path, clock: FakeClock) -> None:
    ring = KeyRing.load_or_create(ring_path, clock)
    with pytest.raises(ValueError, match="keep_retired_for"):
        ring.rotate_signing_key(keep_retired_for=-1)


def test_rotations_leave_no_temporary_files(ring_path: Path, clock: FakeClock) -> None:
    ring = KeyRing.load_or_create(ring_path, clock)
    ring.rotate_master_key()
    ring.rotate_signing_key(keep_retired_for=HOUR)

    names = sorted(p.name for p in ring_path.parent.iterdir())
    assert names == ["keyring.json", "keyring.json.lock"]
    assert _mode(ring_path) == 0o600
    assert _mode(ring_path.with_name("keyring.json.lock")) == 0o600


def test_a_staged_master_key_is_kept_but_not_used_until_activated(
    ring_path: Path, clock: FakeClock
) -> None:
    """A staged rotation: every copy of the ring learns the new key before any data key
    is wrapped under it; activating it is the second step."""
    ring = KeyRing.create(ring_path, clock)
    old = ring.active_master_key
    staged = ring.rotate_master_key(activate=False)
    copy = KeyRing.load(ring_path, clock)  # what another process reads now
    assert copy.active_master_key == old
    assert copy.master_key(staged.id) == staged
    assert ring.activate_newest_master_key() == staged
    assert KeyRing.load(ring_path, clock).active_master_key == staged
