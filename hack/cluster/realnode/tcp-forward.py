"""Forward TCP from LISTEN_HOST:LISTEN_PORT to TARGET_HOST:TARGET_PORT (the apiserver's
bridge-side door for pods; see hack/cluster/realnode.sh). Standard library only.

Usage: python3 tcp-forward.py LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT
"""

import asyncio
import contextlib
import sys


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        with contextlib.suppress(Exception):  # closing a transport that already broke
            writer.close()


async def main(listen_host: str, listen_port: int, target_host: str, target_port: int) -> None:
    async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            tr, tw = await asyncio.open_connection(target_host, target_port)
        except OSError:
            cw.close()
            return
        await asyncio.gather(pipe(cr, tw), pipe(tr, cw))

    server = await asyncio.start_server(handle, listen_host, listen_port, reuse_address=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    lh, lp, th, tp = sys.argv[1:5]
    asyncio.run(main(lh, int(lp), th, int(tp)))
