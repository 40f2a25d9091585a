"""dgram.py: Unix datagram and seqpacket sockets with messages in flight.

A parent and its child: the parent keeps three datagrams ahead on a
datagram socketpair; for each, the child answers with two messages on a
seqpacket socketpair and one datagram to a datagram socket the parent bound
to a path in the working directory. Message boundaries matter: each
message is checked as a whole.

Prints "step N ..." each step, the child's exit status and "final H".
Usage: dgram.py [STEPS [PAUSE_MS]]
"""
import hashlib
import os
import socket
import sys
import time

steps = int(sys.argv[1]) if len(sys.argv) > 1 else 40
pause = int(sys.argv[2]) if len(sys.argv) > 2 else -1
AHEAD = 3

d1, d2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
q1, q2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
path = f"bound-{os.getpid()}.sock"
bound = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
bound.bind(path)
for s in (d1, q1, bound):
    s.settimeout(20)

pid = os.fork()
if pid == 0:
    d1.close()
    q1.close()
    sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    while True:
        m = d2.recv(1000)
        if m == b"stop":
            break
        q2.send(m * 2)
        q2.send(b"x" + m)
        sender.sendto(m.upper(), path)
    os._exit(5)

h = hashlib.sha256()
for s in range(1, AHEAD + 1):
    d1.send(f"m{s}".encode())
for s in range(1, steps + 1):
    if s + AHEAD <= steps:
        d1.send(f"m{s + AHEAD}".encode())
    got = [q1.recv(1000), q1.recv(1000), bound.recv(1000)]
    want = [f"m{s}m{s}".encode(), f"xm{s}".encode(), f"M{s}".encode()]
    h.update(b"|".join(got))
    print(f"step {s} {'ok' if got == want else got} {h.hexdigest()[:16]}", flush=True)
    time.sleep((pause if pause >= 0 else 50 + (s * 37) % 51) / 1000)
d1.send(b"stop")
_, status = os.waitpid(pid, 0)
os.unlink(path)
print(f"child exit {os.WEXITSTATUS(status)}", flush=True)
print(f"final {h.hexdigest()}", flush=True)
