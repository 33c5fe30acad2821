#!/usr/bin/env python3
"""Send one QMP command to QEMU and print the reply.
usage: qmp.py SOCKET COMMAND [JSON-ARGUMENTS]   (exit 1 if QEMU answers with an error)"""

import json
import socket
import sys


def main():
    if len(sys.argv) not in (3, 4):
        print(__doc__)
        return 2
    path, cmd = sys.argv[1], sys.argv[2]
    args = json.loads(sys.argv[3]) if len(sys.argv) == 4 else None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        f = s.makefile("rw")
        json.loads(f.readline())  # greeting
        for req in ({"execute": "qmp_capabilities"},
                    {"execute": cmd, **({"arguments": args} if args else {})}):
            f.write(json.dumps(req) + "\n")
            f.flush()
            while True:  # skip asynchronous events
                reply = json.loads(f.readline())
                if "event" not in reply:
                    break
            if "error" in reply:
                print(json.dumps(reply["error"]))
                return 1
    print(json.dumps(reply.get("return")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
