"""Model transfer speed on loopback: ModelServer/fetch_model against a raw asyncio stream, in one run.

An 84 MB float32 model (three tensors) is published once; each repetition fetches it over a fresh TCP
connection on 127.0.0.1 with :func:`ppaia.network.transfer.fetch_model`, which includes the signed
request and header, the 1 MiB body frames, the CID check (SHA-256) and the checked safetensors decode.
The baseline sends the same bytes over a plain asyncio stream (same 1 MiB writes, same read buffer),
with no framing, signing, hashing or decoding. Client and server share one event loop in one process
in both cases. Prints the median of several repetitions per case and the ratio.

    python benchmarks/net_transfer.py
"""

from __future__ import annotations

import asyncio
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table

from ppaia import codec
from ppaia.network.identity import Identity
from ppaia.network.transfer import DEFAULT_CHUNK, STREAM_LIMIT, ModelServer, fetch_model, verify_body

HOST = "127.0.0.1"
REPEATS = 7
GENERATOR = torch.Generator().manual_seed(0)
MODEL = {
    "encoder.weight": torch.randn(4096, 4096, generator=GENERATOR),
    "decoder.weight": torch.randn(1024, 4096, generator=GENERATOR),
    "decoder.bias": torch.randn(1024, generator=GENERATOR),
}


async def raw_seconds(data: bytes) -> float:
    """Seconds to move `data` over a plain asyncio stream: connect, receive every byte, join them."""

    async def send(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        view = memoryview(data)
        for offset in range(0, len(data), DEFAULT_CHUNK):
            writer.write(view[offset : offset + DEFAULT_CHUNK])
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(send, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    tick = time.perf_counter()
    reader, writer = await asyncio.open_connection(HOST, port, limit=STREAM_LIMIT)
    parts, received = [], 0
    while received < len(data):
        part = await reader.readexactly(min(DEFAULT_CHUNK, len(data) - received))
        parts.append(part)
        received += len(part)
    assert len(b"".join(parts)) == len(data)
    seconds = time.perf_counter() - tick
    writer.close()
    server.close()
    await server.wait_closed()
    return seconds


async def measure() -> dict[str, list[float]]:
    server_identity, client_identity = Identity.generate(), Identity.generate()
    expected = codec.expected_of(MODEL)
    times: dict[str, list[float]] = {"raw": [], "fetch": [], "verify": []}
    async with ModelServer(server_identity) as server:
        version = server.publish(1, 0, MODEL)
        for _ in range(REPEATS):
            times["raw"].append(await raw_seconds(version.data))
            tick = time.perf_counter()
            fetched = await fetch_model(
                HOST,
                server.port,
                identity=client_identity,
                round=1,
                step=0,
                expected=expected,
                max_bytes=1 << 30,
                timeout=60,
                expect_sender=server_identity.peer_id,
            )
            times["fetch"].append(time.perf_counter() - tick)
            assert all(torch.equal(fetched.tensors[name], MODEL[name]) for name in MODEL)
            tick = time.perf_counter()
            verify_body(version.cid, version.data, expected)
            times["verify"].append(time.perf_counter() - tick)
    times["size"] = [float(version.size)]
    return times


def main() -> None:
    times = asyncio.run(measure())
    size = times.pop("size")[0]
    console = Console(width=120)
    table = Table(title=f"loopback transfer · {size / 1e6:.1f} MB model · median of {REPEATS}")
    for column in ("case", "seconds", "MB/s"):
        table.add_column(column, justify="right")
    labels = {
        "raw": "raw asyncio stream",
        "fetch": "fetch_model (signed, CID, decode)",
        "verify": "of which CID + decode alone",
    }
    medians = {case: statistics.median(values) for case, values in times.items()}
    for case, label in labels.items():
        table.add_row(label, f"{medians[case]:.3f}", f"{size / medians[case] / 1e6:,.0f}")
    console.print(table)
    console.print(f"fetch_model throughput / raw stream throughput: {medians['raw'] / medians['fetch']:.0%}")


if __name__ == "__main__":
    main()
