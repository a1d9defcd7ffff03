"""The node's processes end with the process that started them (llm_node, tts_bridge).

Kept apart from node.py so that a process such as the TTS bridge can use it without importing
the whole node (the Ollama client, psutil, the core).
"""

import ctypes
import os
import signal
import sys


def exit_with_parent() -> None:
    """Have the kernel send SIGTERM to this process when the process that started it dies.

    `ros2 launch` dies at once on SIGTERM (launch installs no handler for it), `ros2 run` and a
    shell die on it too; the node would then live on without a parent, keeping the server and
    the model's RAM. SIGTERM takes the normal exit path (llm_node's own handler: the
    node stops its server). A node whose parent never goes away (systemd, PID 1) is not affected.
    Linux sends it when the parent *thread* that started the node ends: a program starting
    llm_node from a short-lived thread stops it too. The notice covers only a parent death
    after prctl(): one between reading the parent here and prctl() is caught by checking the
    parent again; one while the interpreter starts (before main) is not seen, and leaves an
    unconfigured node (no server) that the user ends.
    """
    parent = os.getppid()
    pr_set_pdeathsig = 1
    if ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM) != 0:
        raise OSError(ctypes.get_errno(), 'prctl(PR_SET_PDEATHSIG) failed')
    if os.getppid() != parent:
        sys.exit(f'{os.path.basename(sys.argv[0])}: the process that started it exited; not '
                 'starting')
