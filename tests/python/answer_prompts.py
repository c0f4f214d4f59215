"""Runs a command on a pseudo-terminal and answers its prompts, as a person would.

    answer_prompts.py PROMPT ANSWER [PROMPT ANSWER ...] -- COMMAND [ARGS ...]

Waits (up to 20 s each) for each PROMPT to appear in what the command prints, and for the
command to read its terminal (it turns off line editing or echo to read a key or a secret),
then types ANSWER (`\\n` stands for Enter). Prints everything the command printed, and exits
with its exit code; 124 if a prompt never came.
"""

import os
import pty
import select
import sys
import termios
import time


def main() -> int:
    split = sys.argv.index("--")
    pairs = sys.argv[1:split]
    command = sys.argv[split + 1 :]
    pid, fd = pty.fork()
    if pid == 0:
        os.execvp(command[0], command)
    seen = b""

    def read(deadline: float, most: float = 20.0) -> bool:
        nonlocal seen
        left = min(deadline - time.monotonic(), most)
        if left <= 0:
            return False
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            return False
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            return False
        if not chunk:
            return False
        seen += chunk
        return True

    for prompt, answer in zip(pairs[::2], pairs[1::2]):
        deadline = time.monotonic() + 20
        while prompt.encode() not in seen:
            if not read(deadline):
                sys.stdout.write(seen.decode(errors="replace"))
                print(f"\nanswer_prompts: no prompt {prompt!r}", file=sys.stderr)
                os.kill(pid, 9)
                return 124
        seen = seen.replace(prompt.encode(), b"<prompt>", 1)
        # Typed before the command switches its terminal to read, the answer could be lost.
        while termios.tcgetattr(fd)[3] & termios.ICANON and termios.tcgetattr(fd)[3] & termios.ECHO:
            if time.monotonic() > deadline:
                print(f"\nanswer_prompts: {prompt!r} never read", file=sys.stderr)
                os.kill(pid, 9)
                return 124
            read(deadline, most=0.01)
        os.write(fd, answer.replace("\\n", "\n").encode())
    deadline = time.monotonic() + 20
    while read(deadline):
        pass
    _, status = os.waitpid(pid, 0)
    sys.stdout.write(seen.decode(errors="replace"))
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main())
