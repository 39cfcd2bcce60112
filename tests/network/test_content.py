"""Content ids: CIDv1 raw sha2-256 in base32, and nothing else accepted."""

import pytest
from multiformats import CID, multihash

from ppaia.network.content import check_content, cid_of, parse_cid
from ppaia.network.errors import ProtocolError

EMPTY = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"  # CIDv1 raw sha2-256 of b""


def test_known_vector_and_round_trip() -> None:
    assert cid_of(b"") == EMPTY
    assert parse_cid(EMPTY) == EMPTY
    other = cid_of(b"model bytes")
    assert other != EMPTY and other.startswith("bafkrei") and parse_cid(other) == other


def test_cids_agree_with_multiformats() -> None:
    for data in [b"", b"x", bytes(range(256)) * 100]:
        assert cid_of(data) == str(CID("base32", 1, "raw", multihash.digest(data, "sha2-256")))


def test_other_bases_are_normalised_to_base32() -> None:
    base58 = str(CID("base58btc", 1, "raw", multihash.digest(b"", "sha2-256")))
    assert base58 != EMPTY and parse_cid(base58) == EMPTY
    assert parse_cid(EMPTY.upper()) == EMPTY  # multibase "B": base32 upper case


@pytest.mark.parametrize(
    "text",
    [
        "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG",  # CIDv0 (dag-pb)
        str(CID("base32", 1, "dag-pb", multihash.digest(b"", "sha2-256"))),
        str(CID("base32", 1, "dag-cbor", multihash.digest(b"", "sha2-256"))),
        str(CID("base32", 1, "raw", multihash.digest(b"", "sha2-512"))),
        str(CID("base32", 1, "raw", multihash.digest(b"", "sha2-256", size=20))),  # truncated digest
        EMPTY[:-1],
        EMPTY + "a",
        "",
        "b",
        "zzzz",
        "\x00\xff",
        "bafk" + "!" * 55,
        "b" * 200,
        None,
        12,
        b"bafkrei",
    ],
)
def test_anything_but_v1_raw_sha256_is_a_bad_cid(text: object) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_cid(text)
    assert caught.value.reason == "bad_cid"


def test_content_must_hash_to_its_cid() -> None:
    check_content(EMPTY, b"")
    with pytest.raises(ProtocolError, match="not to the announced") as caught:
        check_content(EMPTY, b"\x00")
    assert caught.value.reason == "wrong_cid"
