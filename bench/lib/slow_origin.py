#!/usr/bin/env python3
"""A vendor that takes DELAY_MS (default 200) to answer each request with 204: HTTP/1.1
keep-alive on 127.0.0.1:PORT, any number of requests at once (asyncio). Counts what it answered
and prints the count to stdout when stopped (SIGTERM). Used by bench/queue.sh."""
import asyncio, os, signal, sys

PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 18090
DELAY = int(os.environ.get("DELAY_MS", "200")) / 1000
answered = 0


async def handle(reader, writer):
    global answered
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if length:
                await reader.readexactly(length)
            await asyncio.sleep(DELAY)
            writer.write(b"HTTP/1.1 204 No Content\r\nConnection: keep-alive\r\n\r\n")
            await writer.drain()
            answered += 1
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", PORT, backlog=4096, limit=1 << 20)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    async with server:
        await stop.wait()
    print(answered, flush=True)


asyncio.run(main())
