"""Server-Sent Events and long polling read the way a Python author would
read them: httpx, an event-stream parser written from the HTML standard's
rules, and a WebSocket member (test_client.py's plain client) in the same
room to compare with. Against the real binary (SWITCHBOARD_BIN)."""

import asyncio
import base64
import json
import sys
import traceback

import httpx
import msgpack

from test_client import connect, start_server

WAIT = 10  # seconds: a bound on each read, never an assertion about speed


class Event:
    def __init__(self, event, data, id_):
        self.event = event
        self.raw = data
        self.data = json.loads(data)
        self.id = id_

    def __repr__(self):
        return f"Event({self.event!r}, id={self.id!r}, {self.raw!r})"


class EventStream:
    """A `text/event-stream` response, parsed as an EventSource parses it:
    lines, `field: value`, an event dispatched at each blank line, comments
    ignored, the last event id kept for resuming."""

    def __init__(self, response):
        assert response.status_code == 200, response.status_code
        assert response.headers["content-type"].startswith("text/event-stream"), response.headers
        self.lines = response.aiter_lines()
        self.last_id = None
        self.retry = None

    async def _next(self):
        event, data, id_ = "", [], None
        async for line in self.lines:
            if line == "":
                if id_ is not None:
                    self.last_id = id_
                if not data:
                    event = ""
                    continue
                return Event(event or "message", "\n".join(data), id_)
            if line.startswith(":"):
                continue  # a comment: the keepalive
            field, _, value = line.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)
            elif field == "id":
                id_ = value
            elif field == "retry" and value.isdigit():
                self.retry = int(value)
        return None

    async def next(self):
        """The next event, or None once the server ended the stream."""
        return await asyncio.wait_for(self._next(), WAIT)

    async def next_named(self, name):
        while True:
            ev = await self.next()
            assert ev is not None, f"the stream ended before a {name} event"
            if ev.event == name:
                return ev


def sse_data(ev):
    """A msg's `data` as the WebSocket member decodes it: JSON, or the
    MessagePack bytes that JSON cannot hold, base64."""
    if "data_msgpack" in ev:
        assert "data" not in ev, ev
        return msgpack.unpackb(base64.b64decode(ev["data_msgpack"]), raw=False)
    return ev["data"]


async def ws_msgs(conn, n):
    return [await conn.wait_for(lambda e: e["op"] == "msg") for _ in range(n)]


class Publisher:
    """Publishes numbered messages, alternately over the WebSocket and over
    HTTP (`POST /api/publish`, as the user carol), with a msg_id each."""

    def __init__(self, ws, http):
        self.ws, self.http, self.count = ws, http, 0

    async def publish(self, room, data=None):
        i = self.count
        self.count += 1
        value = i if data is None else data
        if i % 2 == 0:
            ok = await self.ws.command("pub", room=room, data=value, msg_id=f"ws-{i}")
            assert ok["op"] == "ok", ok
            return ok["offset"]
        r = await self.http.post(
            "/api/publish", params={"user": "carol"}, json={"room": room, "data": value, "msg_id": f"http-{i}"}
        )
        assert r.status_code == 200, (r.status_code, r.text)
        assert r.json()["room"] == room, r.json()
        return r.json()["offset"]


async def test_an_sse_stream_sees_what_a_websocket_member_sees(addr):
    alice = await connect(addr, "alice")
    assert (await alice.command("join", room="feed"))["op"] == "ok"
    async with httpx.AsyncClient(base_url=f"http://{addr}", timeout=WAIT) as http:
        params = {"rooms": "feed", "user": "bob"}
        async with http.stream("GET", "/sse", params=params, headers={"Accept": "text/event-stream"}) as resp:
            sse = EventStream(resp)
            hello = await sse.next_named("hello")
            assert hello.data["user"] == "bob" and hello.data["rooms"] == ["feed"], hello
            assert sse.retry is not None and 2000 <= sse.retry <= 3000, sse.retry
            join = await sse.next_named("join")
            assert join.data["room"] == "feed" and join.data["offset"] == 0, join
            pub = Publisher(alice, http)
            offsets = []
            for i in range(50):
                # Every fifth from the WebSocket is binary, which JSON cannot
                # hold: the stream carries it as data_msgpack.
                data = bytes([i, 0xFF]) if i % 5 == 4 and i % 2 == 0 else {"n": i, "text": f"m{i} é"}
                offsets.append(await pub.publish("feed", data))
            assert offsets == list(range(1, 51)), offsets
            # A repeated msg_id over HTTP is published once: the original offset.
            r = await http.post(
                "/api/publish", params={"user": "carol"}, json={"room": "feed", "data": "again", "msg_id": "http-1"}
            )
            assert r.json() == {"room": "feed", "offset": 2}, r.text
            seen_ws = [(m["offset"], m["from"], m["data"]) for m in await ws_msgs(alice, 50)]
            got = [await sse.next_named("msg") for _ in range(50)]
            seen_sse = [(e.data["offset"], e.data["from"], sse_data(e.data)) for e in got]
            assert seen_sse == seen_ws, (seen_sse, seen_ws)
            assert [o for o, _, _ in seen_ws] == offsets
            assert {f for _, f, _ in seen_ws} == {"alice", "carol"}
            assert seen_ws[4][2] == bytes([4, 0xFF]) and "data_msgpack" in got[4].data
            # Each id is the position after its message.
            assert all(e.id.endswith(f".{e.data['offset']}") for e in got), [e.id for e in got]
            # A dm to bob over HTTP reaches the stream.
            r = await http.post("/api/send", params={"user": "carol"}, json={"to": "bob", "data": {"psst": 1}})
            assert r.json() == {"delivered": 1}, r.text
            dm = await sse.next_named("dm")
            assert dm.data == {"from": "carol", "data": {"psst": 1}}, dm
            # The stream is a member like a connection: present, seen joining.
            pres = await alice.command("presence", room="feed")
            assert pres["users"] == ["alice", "bob"], pres
    await alice.ws.close()


async def test_a_stream_closed_midway_resumes_from_last_event_id_with_nothing_lost_or_repeated(addr):
    alice = await connect(addr, "alice")
    for room in ("ra", "rb"):
        assert (await alice.command("join", room=room))["op"] == "ok"
    got = []  # (room, offset, value) from every stream, in arrival order

    def take(ev):
        got.append((ev.data["room"], ev.data["offset"], ev.data["data"]))

    async with httpx.AsyncClient(base_url=f"http://{addr}", timeout=WAIT) as http:
        pub = Publisher(alice, http)

        async def publish(n):
            for _ in range(n):
                await pub.publish("ra" if pub.count % 3 else "rb")

        async def resume(params, headers, until):
            """Opens a stream that resumes, reads until `until` messages in
            all, returns the last event id it processed."""
            async with http.stream("GET", "/sse", params=params, headers=headers) as resp:
                sse = EventStream(resp)
                while len(got) < until:
                    ev = await sse.next()
                    assert ev is not None, "the stream ended"
                    if ev.event == "join":
                        assert ev.data["recovered"] is True, ev
                    elif ev.event == "msg":
                        take(ev)
                return sse.last_id

        base = {"rooms": "ra,rb", "user": "bob"}
        async with http.stream("GET", "/sse", params=base) as resp:
            sse = EventStream(resp)
            await sse.next_named("join")
            await sse.next_named("join")
            await publish(30)
            for _ in range(11):
                take(await sse.next_named("msg"))
            last = sse.last_id
            # Closed with messages still on their way (read into httpx's
            # buffer or not): they were not processed, so they must come again.
        await publish(30)
        # As EventSource resumes: the Last-Event-ID header.
        last = await resume(base, {"Last-Event-ID": last}, 31)
        await publish(10)
        last = await resume(base, {"Last-Event-ID": last}, 55)
        # A client that cannot set headers: the query parameter.
        await publish(15)
        last = await resume(dict(base, last_event_id=last), {}, 85)
        values = sorted(v for _, _, v in got)
        assert values == list(range(85)), values
        # Each room in offset order with no gap, and as the WebSocket member saw it.
        seen_ws = await ws_msgs(alice, 85)
        for room in ("ra", "rb"):
            mine = [(o, v) for r, o, v in got if r == room]
            theirs = [(m["offset"], m["data"]) for m in seen_ws if m["room"] == room]
            assert mine == theirs, (room, mine, theirs)
            assert [o for o, _ in mine] == list(range(1, len(mine) + 1)), mine
        # Nothing more was pending after the last id: the next message
        # is the first one resumed.
        async with http.stream("GET", "/sse", params=base, headers={"Last-Event-ID": last}) as resp:
            sse = EventStream(resp)
            await publish(1)
            assert (await sse.next_named("msg")).data["data"] == 85
    await alice.ws.close()


async def test_a_long_poll_loop_sees_every_message_once_in_order(addr):
    alice = await connect(addr, "alice")
    assert (await alice.command("join", room="chat"))["op"] == "ok"
    async with httpx.AsyncClient(base_url=f"http://{addr}", timeout=WAIT) as http:

        async def poll(cursor=None):
            params = {"rooms": "chat", "user": "dave"}
            if cursor is not None:
                params["cursor"] = cursor
            r = await http.get("/poll", params=params)
            assert r.status_code == 200, (r.status_code, r.text)
            return r.json()

        first = await poll()
        ops = [e["op"] for e in first["events"]]
        assert ops == ["hello", "join"], first
        pub = Publisher(alice, http)

        async def publisher():
            for i in range(60):
                await pub.publish("chat")
                if i % 10 == 9:
                    await asyncio.sleep(0.05)

        task = asyncio.create_task(publisher())
        cursor, seen, answers, replayed = first["cursor"], [], 0, 0
        while len(seen) < 60:
            answers += 1
            assert answers < 1000, f"no progress: {len(seen)} of 60"
            answer = await poll(cursor)
            msgs = [e for e in answer["events"] if e["op"] == "msg"]
            if msgs and answers % 4 == 0:
                # This answer is "lost": the same cursor again gets its
                # events again, then anything newer.
                again = await poll(cursor)
                again_msgs = [e for e in again["events"] if e["op"] == "msg"]
                assert again_msgs[: len(msgs)] == msgs, (msgs, again_msgs)
                replayed += 1
                answer, msgs = again, again_msgs
            seen.extend(msgs)
            cursor = answer["cursor"]
        await task
        assert [m["data"] for m in seen] == list(range(60)), [m["data"] for m in seen]
        assert replayed > 0, "no answer was repeated"
        seen_ws = await ws_msgs(alice, 60)
        assert [(m["offset"], m["from"], m["data"]) for m in seen] == [
            (m["offset"], m["from"], m["data"]) for m in seen_ws
        ]
        # Quiet: the poll waits out poll.timeout_ms and answers nothing.
        assert (await poll(cursor))["events"] == []
    await alice.ws.close()


async def main():
    proc, addr = start_server(
        SWITCHBOARD__LIMITS__PUBLISH_PER_S="100000",
        SWITCHBOARD__LIMITS__PUBLISH_BURST="100000",
        SWITCHBOARD__POLL__TIMEOUT_MS="300",
    )
    passed = failed = 0
    try:
        for test in (
            test_an_sse_stream_sees_what_a_websocket_member_sees,
            test_a_stream_closed_midway_resumes_from_last_event_id_with_nothing_lost_or_repeated,
            test_a_long_poll_loop_sees_every_message_once_in_order,
        ):
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
    print(f"python sse: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
