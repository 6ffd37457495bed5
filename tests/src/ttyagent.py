"""Runs polkit's real text agent, pkttyagent, on a pseudo-terminal and types for the person.

Usage: ttyagent.py LOG READY SUBJECT_PID ANSWER...

pkttyagent registers as the authentication agent of process SUBJECT_PID; once it is registered
(it closes its --notify-fd), READY is created. Everything it prints goes to LOG. At each
"Password:" prompt the next ANSWER is typed: a password, or "-" to type nothing (the dialog
stays open until polkitd withdraws it). Exits when pkttyagent does, or after 120 s.
"""

import os
import pty
import select
import sys
import time

log_path, ready_path, subject = sys.argv[1], sys.argv[2], sys.argv[3]
answers = sys.argv[4:]

notify_r, notify_w = os.pipe()
os.set_inheritable(notify_w, True)
pid, fd = pty.fork()
if pid == 0:
    os.close(notify_r)
    os.execvp("pkttyagent", ["pkttyagent", "--process", subject, "--notify-fd", str(notify_w)])
os.close(notify_w)

log = open(log_path, "ab", buffering=0)
watching = [fd, notify_r]
seen = b""
end = time.monotonic() + 120
while time.monotonic() < end:
    ready, _, _ = select.select(watching, [], [], 1)
    if notify_r in ready:
        if not os.read(notify_r, 16):
            watching.remove(notify_r)
            os.close(notify_r)
            open(ready_path, "w").close()
    if fd not in ready:
        continue
    try:
        data = os.read(fd, 4096)
    except OSError:
        break
    if not data:
        break
    log.write(data)
    seen += data
    while b"Password:" in seen:
        seen = seen.split(b"Password:", 1)[1]
        answer = answers.pop(0) if answers else "-"
        if answer != "-":
            # pkttyagent turns echo off with TCSAFLUSH, which drops what was typed before.
            time.sleep(0.2)
            os.write(fd, answer.encode() + b"\n")
try:
    os.kill(pid, 15)
except ProcessLookupError:
    pass
_, status = os.waitpid(pid, 0)
log.write(b"\n[pkttyagent exited: %d]\n" % status)
