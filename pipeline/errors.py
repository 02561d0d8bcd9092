"""The errors whose message is the whole story.

A `TollbridgeError` is something the user can fix — a file, a key, a URL, an
audio file — and its message names what is wrong and where (with any
password masked). The command line prints it as one `error:` line and exits
1; only `--debug` adds the traceback.
"""

from __future__ import annotations


class TollbridgeError(Exception):
    """Something wrong in what tollbridge was given; the message says what and where."""
