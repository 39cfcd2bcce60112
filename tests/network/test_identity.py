import stat

import pytest

from ppaia.network.identity import KEY_FILE, Identity, IdentityError, peer_id_of, verify_signature


def test_created_once_with_private_mode_and_reloaded(tmp_path):
    first = Identity.load_or_create(tmp_path / "peer")
    path = tmp_path / "peer" / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = Identity.load_or_create(tmp_path / "peer")
    assert again.peer_id == first.peer_id and again.public_key == first.public_key
    assert len(first.peer_id) == 40 and first.node_id == bytes.fromhex(first.peer_id)
    assert first.peer_id == peer_id_of(first.public_key)


def test_signatures_verify_and_tampering_fails():
    me, other = Identity.generate(), Identity.generate()
    signature = me.sign(b"round 3 model")
    assert verify_signature(me.public_key, signature, b"round 3 model")
    assert not verify_signature(me.public_key, signature, b"round 4 model")
    assert not verify_signature(other.public_key, signature, b"round 3 model")
    assert not verify_signature(me.public_key[:-1], signature, b"round 3 model")
    assert not verify_signature(me.public_key, signature[:10], b"round 3 model")
    assert me.peer_id != other.peer_id


def test_key_readable_by_others_or_malformed_is_refused(tmp_path):
    Identity.load_or_create(tmp_path)
    (tmp_path / KEY_FILE).chmod(0o644)
    with pytest.raises(IdentityError, match="0600"):
        Identity.load_or_create(tmp_path)
    (tmp_path / KEY_FILE).write_bytes(b"short")
    (tmp_path / KEY_FILE).chmod(0o600)
    with pytest.raises(IdentityError, match="32-byte"):
        Identity.load_or_create(tmp_path)
