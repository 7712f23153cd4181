"""`dario-ctl env`: print the settings that point tools at dario, for eval / source.

    eval "$(dario-ctl env)"                        # sh, bash, zsh
    dario-ctl env --shell fish | source            # fish
    dario-ctl env --shell powershell | Invoke-Expression
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from dario.ctl.run import environment_for
from dario.ctl.toolenv import render

if TYPE_CHECKING:
    from dario.ctl.client import ControlClient

# The client-key name when the daemon wants a key and no --name is given.
DEFAULT_NAME = "shell"


def default_shell(platform: str | None = None) -> str:
    return "powershell" if (platform or sys.platform) == "win32" else "sh"


def env_text(client: ControlClient, shell: str | None, name: str | None) -> str:
    status = client.status()
    key_name = name or DEFAULT_NAME
    return render(environment_for(client, status, key_name, key_name), shell or default_shell())
