"""Write LINES copies of TEXT to stderr, one write() per line, then exit:
the background noise of a chatty worker.  A line is one write of less than
PIPE_BUF bytes, so concurrent writers sharing the superdaemon's stderr (a
pipe, or the journal's stream socket) never split each other's lines, and
the reader can count exactly what arrived.

    python3 noise.py LINES TEXT
"""

import os
import sys

count, text = int(sys.argv[1]), sys.argv[2]
line = (text + "\n").encode()
assert len(line) <= 4096, "longer lines could be split by other writers"
for _ in range(count):
    os.write(2, line)
