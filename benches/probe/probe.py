"""Independent density probe (issue 11's method): N WebSocket connections (or
Server-Sent Events streams) from several Python processes, each joined to one
of 100 rooms with presence:false; server RSS from /proc 2 s and 10 s after the
last join, then under a ping cadence of PING_S seconds (steady state; a stream
cannot send, so for `sse` it stays idle and reads its `: keepalive` comments).
Usage: probe.py ADDR PID [N] [PING_S] [ws|sse]"""
import asyncio, multiprocessing as mp, os, random, sys, time
import msgpack, websockets

def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

async def open_sse(addr, i):
    """`GET /sse` on a plain socket; returns once the room's `join` arrived."""
    host, port = addr.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET /sse?rooms=r{i % 100}&user=p{i}&presence=false HTTP/1.1\r\n"
                 f"Host: {addr}\r\nAccept: text/event-stream\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head.decode(errors="replace"))
    while True:
        event = await reader.readuntil(b"\n\n")
        if event.startswith(b"event: join\n"):
            return reader, writer
        if event.startswith(b"event: err\n"):
            raise RuntimeError(event.decode(errors="replace"))

async def worker_main(addr, first, n, ping_s, q, go, transport):
    conns = []
    sem = asyncio.Semaphore(64)
    async def one_sse(i):
        async with sem:
            conns.append(await open_sse(addr, i))
    async def one(i):
        async with sem:
            ws = await websockets.connect(f"ws://{addr}/ws?user=p{i}", subprotocols=["switchboard.v1"],
                                          ping_interval=None, max_queue=None, compression=None)
            await ws.recv()  # hello
            await ws.send(msgpack.packb({"op": "join", "id": 1, "room": f"r{i % 100}", "presence": False}))
            while True:
                msg = await ws.recv()
                unp = msgpack.Unpacker(raw=False); unp.feed(msg)
                if any(e.get("id") == 1 for e in unp):
                    break
            conns.append(ws)
    await asyncio.gather(*((one_sse if transport == "sse" else one)(first + i) for i in range(n)))
    q.put(("joined", len(conns)))
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, go.wait)
    if transport == "sse":
        async def drain_sse(reader):
            try:
                while await reader.read(65536):
                    pass
            except Exception:
                pass
        tasks = [asyncio.create_task(drain_sse(r)) for r, _ in conns]
        await asyncio.sleep(3600)
    async def drain(ws):
        try:
            async for _ in ws:
                pass
        except Exception:
            pass
    async def pinger(ws, k):
        await asyncio.sleep(random.random() * ping_s)
        while True:
            await ws.send(msgpack.packb({"op": "ping", "id": k}))
            k += 1
            await asyncio.sleep(ping_s)
    tasks = [asyncio.create_task(drain(ws)) for ws in conns]
    tasks += [asyncio.create_task(pinger(ws, 2)) for ws in conns]
    await asyncio.sleep(3600)

def worker(addr, first, n, ping_s, q, go, transport):
    asyncio.run(worker_main(addr, first, n, ping_s, q, go, transport))

def main():
    addr, pid = sys.argv[1], int(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 8000
    ping_s = float(sys.argv[4]) if len(sys.argv) > 4 else 5.0
    transport = sys.argv[5] if len(sys.argv) > 5 else "ws"
    assert transport in ("ws", "sse"), transport
    procs_n = 4
    base = rss_kib(pid)
    q, go = mp.Queue(), mp.Event()
    per = n // procs_n
    ps = [mp.Process(target=worker, args=(addr, k * per, per, ping_s, q, go, transport), daemon=True) for k in range(procs_n)]
    t0 = time.time()
    for p in ps: p.start()
    total = sum(q.get()[1] for _ in ps)
    joined = time.time()
    what = "SSE streams" if transport == "sse" else "WebSocket connections"
    print(f"{transport}: {total} {what} joined in {joined - t0:.1f} s; server RSS before: {base} KiB")
    def per_conn(): return (rss_kib(pid) - base) / total
    time.sleep(max(0, joined + 2 - time.time())); a2 = per_conn()
    time.sleep(max(0, joined + 10 - time.time())); a10 = per_conn()
    print(f"{transport} idle: 2 s after the last join {a2:.2f} KiB/conn, 10 s after {a10:.2f} KiB/conn")
    go.set()
    start = time.time()
    time.sleep(3 * ping_s)
    samples = []
    for _ in range(10):
        samples.append(per_conn()); time.sleep(ping_s / 5)
    doing = "reading keepalives" if transport == "sse" else f"pinging every {ping_s:g} s"
    print(f"{transport} {doing}: steady {sum(samples)/len(samples):.2f} KiB/conn (min {min(samples):.2f}, max {max(samples):.2f})")
    for p in ps: p.terminate()

if __name__ == "__main__":
    main()
