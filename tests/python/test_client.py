"""A Switchboard client written the way a Python client author would write it:
an ordinary WebSocket library and an ordinary MessagePack library, against the
real binary. Proves the wire format is not Rust-specific."""

import asyncio
import os
import re
import subprocess
import sys
import threading
import traceback

import msgpack
import websockets

BIN = os.environ.get("SWITCHBOARD_BIN", "target/debug/switchboard")


def start_server(**settings):
    """A real node on a free port; `settings` are extra environment
    variables (SWITCHBOARD__SECTION__KEY)."""
    env = dict(os.environ, SWITCHBOARD__HTTP__LISTEN="127.0.0.1:0", RUST_LOG="info", **settings)
    proc = subprocess.Popen([BIN], env=env, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        m = re.search(r"addr=(\S+)", line)
        if "listening" in line and m:
            # Keep draining the log so the server never blocks on a full pipe.
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, m.group(1)
    raise RuntimeError("server did not start")


def events(message):
    """Every MessagePack map in one binary WebSocket message."""
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(message)
    return list(unpacker)


class Conn:
    def __init__(self, ws):
        self.ws = ws
        self.queue = []
        self.next_id = 1

    async def recv_events(self):
        msg = await asyncio.wait_for(self.ws.recv(), 5)
        assert isinstance(msg, bytes), "server sent a text frame"
        self.queue.extend(events(msg))

    async def wait_for(self, pred):
        while True:
            for i, ev in enumerate(self.queue):
                if pred(ev):
                    return self.queue.pop(i)
            await self.recv_events()

    async def command(self, op, **fields):
        cid = self.next_id
        self.next_id += 1
        await self.ws.send(msgpack.packb(dict(op=op, id=cid, **fields)))
        return await self.wait_for(lambda e: e.get("id") == cid and e["op"] in ("ok", "err", "pong"))


async def connect(addr, user):
    ws = await websockets.connect(f"ws://{addr}/ws?user={user}", subprotocols=["switchboard.v1"])
    assert ws.subprotocol == "switchboard.v1"
    c = Conn(ws)
    hello = await c.wait_for(lambda e: e["op"] == "hello")
    assert hello["v"] == 1 and hello["user"] == user, hello
    return c


async def test_round_trip(addr):
    alice = await connect(addr, "alice")
    bob = await connect(addr, "bob")
    ok = await alice.command("join", room="py")
    assert ok["op"] == "ok" and ok["offset"] == 0, ok
    await bob.command("join", room="py")
    data = {"text": "héllo", "n": [1, 2.5, None, True], "blob": b"\x00\x01"}
    ok = await bob.command("pub", room="py", data=data)
    assert ok["offset"] == 1, ok
    msg = await alice.wait_for(lambda e: e["op"] == "msg")
    assert msg["room"] == "py" and msg["from"] == "bob" and msg["offset"] == 1
    assert msg["data"] == data, msg["data"]
    joined = await alice.wait_for(lambda e: e["op"] == "joined" and e["user"] == "bob")
    assert joined["room"] == "py"
    pres = await alice.command("presence", room="py")
    assert pres["users"] == ["alice", "bob"], pres
    ok = await alice.command("send", to="bob", data="psst")
    assert ok["delivered"] == 1
    dm = await bob.wait_for(lambda e: e["op"] == "dm")
    assert dm == {"op": "dm", "from": "alice", "data": "psst"}, dm
    pong = await alice.command("ping")
    assert pong["op"] == "pong"
    err = await alice.command("join", room="no spaces")
    assert err["op"] == "err" and err["code"] == 400 and err["reason"].startswith("room:"), err
    await alice.ws.close()
    await bob.ws.close()


async def test_batched_commands(addr):
    c = await connect(addr, "carol")
    batch = b"".join(
        msgpack.packb(m)
        for m in (
            {"op": "join", "room": "batch", "id": 1},
            {"op": "pub", "room": "batch", "data": 1, "id": 2},
            {"op": "ping", "id": 3},
        )
    )
    await c.ws.send(batch)
    for cid in (1, 2, 3):
        ev = await c.wait_for(lambda e, cid=cid: e.get("id") == cid)
        assert ev["op"] in ("ok", "pong"), ev
    await c.ws.close()


async def test_text_frame_closes_1003(addr):
    c = await connect(addr, "dave")
    await c.ws.send('{"op":"ping"}')
    try:
        while True:
            await c.recv_events()
    except websockets.ConnectionClosed as e:
        assert e.rcvd.code == 1003, e
    assert any(ev["op"] == "err" and ev["code"] == 400 for ev in c.queue), c.queue


async def main():
    proc, addr = start_server()
    passed = failed = 0
    try:
        for test in (test_round_trip, test_batched_commands, test_text_frame_closes_1003):
            try:
                await test(addr)
                passed += 1
                print(f"ok   {test.__name__}")
            except Exception:
                failed += 1
                print(f"FAIL {test.__name__}")
                traceback.print_exc()
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    print(f"python: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
