"""``cocomix serve``."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Optional

import typer

from .common import console, dictionary_or_sae_default, err_console

LOCAL = ("127.0.0.1", "localhost", "::1")


def serve(
    model: Path = typer.Option(..., "--model", help="Checkpoint directory (NTP, CoCoMix, converted)."),
    dictionary: Optional[Path] = typer.Option(None, "--concepts",
                                              help="Concept dictionary (`sae describe`): labels, "
                                                   "names for `steer`, the page's search "
                                                   "(default: concepts.json in the --sae directory)."),
    sae: Optional[Path] = typer.Option(None, "--sae", help="Read and steer a plain model through "
                                                            "this SAE's latents."),
    layer: Optional[int] = typer.Option(None, "--layer", help="Block the SAE reads (with --sae)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (127.0.0.1: this "
                                                          "machine only)."),
    port: int = typer.Option(8080, "--port", help="Port (0: any free port)."),
    name: Optional[str] = typer.Option(None, "--name", help="Model id clients send (default: the "
                                                             "checkpoint directory's name)."),
):
    """An OpenAI-compatible server with concept steering, and the concept studio page at /."""
    from cocomix_mlx.errors import ConfigError

    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise ConfigError("`cocomix serve` needs the serve extra: "
                          "pip install 'cocomix-mlx[serve]'") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port} is not a port number (0..65535)")
    from cocomix_mlx.server import serve as run
    from cocomix_mlx.studio import open_studio

    studio = open_studio(model, dictionary_or_sae_default(dictionary, sae), sae, layer, name)
    try:
        sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host
                                    else socket.AF_INET)
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}; pick another "
                          "--port or --host") from None
    bound = sock.getsockname()[1]
    where = f"[{host}]" if ":" in host else host
    console.print(f"serving {studio.model_id} ({studio.kind}) at http://{where}:{bound}/ — "
                  "the page at /, the API under /v1; Ctrl-C stops", highlight=False,
                  soft_wrap=True)
    console.file.flush()
    if host not in LOCAL:
        err_console.print(f"[yellow]warning:[/] listening on {host}: anyone who can reach this "
                          "machine can use the model (there is no authentication)")
    run(studio, sock)
