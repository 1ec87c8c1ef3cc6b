"""A test board's listener (see board.rs): after a delay, accepts
connections on port 22 (or PORT), over IPv4 and IPv6, and closes each at
once.

Usage: board.py DELAY FOLDER [PORT]. Once it listens it writes
FOLDER/listening (FOLDER/listening.PORT for a port other than 22): the
time it began to (taken just before), in seconds of CLOCK_MONOTONIC. It
leaves the start command's session, which may end before it does."""

import os
import socket
import sys
import time

try:
    os.setsid()
except OSError:
    pass
delay, folder = float(sys.argv[1]), sys.argv[2]
port = int(sys.argv[3]) if len(sys.argv) > 3 else 22
time.sleep(delay)
listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
# A listener just killed by a stop command may hold the port a moment.
give_up = time.monotonic() + 10
while True:
    try:
        listener.bind(("::", port))
        break
    except OSError:
        if time.monotonic() > give_up:
            raise
        time.sleep(0.01)
# The time is taken before listen(): a prober may find the port open
# before the stamp is written, never before that time.
opened = time.monotonic()
listener.listen(128)
stamp = os.path.join(folder, "listening" if port == 22 else f"listening.{port}")
with open(stamp + ".tmp", "w") as out:
    out.write(repr(opened))
os.replace(stamp + ".tmp", stamp)
while True:
    connection, _ = listener.accept()
    connection.close()
