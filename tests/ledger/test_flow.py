"""The publisher flow: models as verified blobs, hashes on the ledger, FedAvg reproduced exactly."""

from itertools import pairwise

import pytest
import torch

import ppaia
from ppaia.config import ExperimentConfig
from ppaia.ledger import (
    BlobError,
    BlobStore,
    FlowError,
    FlowResult,
    content_hash,
    decode,
    encode,
    from_fixed,
    run_publisher_flow,
)

CONFIG = ExperimentConfig.model_validate(
    {"peers": 3, "rounds": 3, "dataset": "digits", "model": "logistic", "rule": "consensus"}
)
EXPECTED = {"0.weight": ((3, 4), torch.float32), "0.bias": ((3,), torch.float32)}


@pytest.fixture(scope="module")
def flow() -> FlowResult:
    return run_publisher_flow(CONFIG)


def test_every_release_is_on_chain_and_is_what_the_clients_trained_from(flow: FlowResult) -> None:
    ledger, store = flow.ledger, flow.store
    assert [r.round for r in flow.rounds] == [0, 1, 2, 3]
    assert [r.version for r in flow.rounds] == [1, 2, 3, 4]
    assert ledger.latest_version().version == 4
    for record in flow.rounds:
        on_chain = ledger.version(record.version)
        assert on_chain.round == record.round and on_chain.model_hash == record.model_hash
        assert on_chain.score == record.score and from_fixed(on_chain.score) == pytest.approx(
            record.accuracy, abs=1e-6
        )
        assert content_hash(store.get(on_chain.model_hash)) == on_chain.model_hash
    for before, record in pairwise(flow.rounds):
        # each client downloaded exactly the blob of the previous release, named by its ledger hash
        assert record.trained_from == (ledger.version(before.version).model_hash,) * len(flow.clients)


def test_submitted_updates_on_chain_are_the_blobs_the_publisher_averaged(flow: FlowResult) -> None:
    ledger, store, expected = flow.ledger, flow.store, flow.expected()
    weights = torch.tensor(flow.sample_counts, dtype=torch.float64)
    weights = (weights / weights.sum()).float()
    for record in flow.rounds[1:]:
        updates = [ledger.update(i) for i in record.update_ids]
        assert sorted(u.trainer for u in updates) == sorted(flow.clients)
        assert all(u.round == record.round for u in updates)
        # audit from the ledger alone: the updates it names, averaged, give the model it released
        models = {u.trainer: decode(store.get(u.update_hash), expected) for u in updates}
        flat = torch.stack(
            [torch.cat([models[c][n].reshape(-1) for n in flow.layout.names]) for c in flow.clients]
        )
        released = decode(store.get(record.model_hash), expected)
        mean = flow.layout.unflatten((weights.unsqueeze(0) @ flat)[0])
        for name in flow.layout.names:
            torch.testing.assert_close(released[name], mean[name], rtol=0, atol=0)


def test_accuracy_improves_and_equals_plain_fedavg(flow: FlowResult) -> None:
    accuracy = [r.accuracy for r in flow.rounds]
    assert all(a < b for a, b in pairwise(accuracy))
    assert accuracy[-1] > 0.8
    simulated = ppaia.run(CONFIG.model_copy(update={"rule": ppaia.RULES.create("fedavg")}))
    # each client trains alone, the simulator all at once: the same numbers up to float rounding
    torch.testing.assert_close(flow.params, simulated.params[0], rtol=1e-5, atol=1e-6)
    for record, row in zip(flow.rounds, simulated.history, strict=True):
        assert record.accuracy == pytest.approx(row["acc_mean"], abs=1e-6)


def test_the_store_refuses_a_tampered_or_missing_blob() -> None:
    store = BlobStore()
    digest = store.put(b"model bytes")
    assert store.get(digest) == b"model bytes" and digest in store
    store._blobs[digest] = b"model bytez"  # altered after put, as a misbehaving IPFS node could
    with pytest.raises(BlobError, match=digest.hex()):
        store.get(digest)
    with pytest.raises(BlobError, match=f"no blob {content_hash(b'other').hex()}"):
        store.get(content_hash(b"other"))


class TamperingStore(BlobStore):
    """Alters the first client update after storing it under its honest hash."""

    def put(self, data: bytes) -> bytes:
        digest = super().put(data)
        if len(self) == 2:  # blob 1 is the initial model, blob 2 the first update
            self._blobs[digest] = data[:-1] + bytes([data[-1] ^ 1])
        return digest


def test_the_publisher_rejects_a_tampered_update() -> None:
    with pytest.raises(
        BlobError, match=r"update 0 from 0x[0-9a-fA-F]+: blob [0-9a-f]{64} fails verification"
    ):
        run_publisher_flow(CONFIG, rounds=1, store=TamperingStore())


def test_encoding_is_deterministic_and_round_trips() -> None:
    params = {"0.weight": torch.randn(3, 4), "0.bias": torch.randn(3)}
    data = encode(params)
    assert data == encode(dict(reversed(params.items())))
    decoded = decode(data, EXPECTED)
    assert all(torch.equal(decoded[name], params[name]) for name in params)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"0.weight": torch.zeros(4, 3), "0.bias": torch.zeros(3)}, r"'0.weight' has shape \(4, 3\)"),
        ({"0.weight": torch.zeros(3, 4), "0.bias": torch.zeros(3, dtype=torch.float64)}, "dtype"),
        ({"0.weight": torch.zeros(3, 4), "0.bias": torch.zeros(3), "x": torch.zeros(1)}, r"unknown \['x'\]"),
        ({"0.weight": torch.zeros(3, 4)}, r"missing \['0.bias'\]"),
        ({"0.weight": torch.zeros(3, 4), "0.bias": torch.tensor([0.0, float("nan"), 0.0])}, "non-finite"),
    ],
)
def test_decode_rejects_a_model_of_the_wrong_form(params: dict, message: str) -> None:
    with pytest.raises(BlobError, match=message):
        decode(encode(params), EXPECTED)


def test_decode_rejects_bytes_that_are_not_safetensors() -> None:
    with pytest.raises(BlobError, match="not a safetensors model"):
        decode(b"\x80\x04not safetensors", EXPECTED)


def test_more_peers_than_accounts_is_a_clear_error() -> None:
    with pytest.raises(FlowError, match="at most 9 peers, got 10"):
        run_publisher_flow(CONFIG.model_copy(update={"peers": 10}))


def test_a_used_ledger_is_refused_and_left_unchanged():
    config = ppaia.ExperimentConfig(peers=2, rounds=1, model="logistic")
    first = run_publisher_flow(config)
    before = first.ledger.latest_version()
    with pytest.raises(FlowError, match="already holds released versions"):
        run_publisher_flow(config, ledger=first.ledger)
    assert first.ledger.latest_version() == before
