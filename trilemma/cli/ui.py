"""``trilemma ui [RUN_DIR …]``: a local web app over run folders (sample, text-to-image, edit, compare, watch).

    trilemma ui runs/ddpm-digits runs/t2i --runs-dir runs --port 7860

Serves on 127.0.0.1 only, unless ``--host`` says otherwise; a public share link only with
``--share``. The page can open run folders and eval JSON files under the given RUN_DIRs and
``--runs-dir`` and nothing else. Needs the ``ui`` extra (Gradio).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from trilemma.cli.common import say, subparser


def register(sub) -> None:
    p = subparser(sub, "ui", "a local web app: sample, text-to-image, edit, compare and watch runs")
    p.add_argument("run_dirs", nargs="*", metavar="RUN_DIR", help="run folders to serve (listed first)")
    p.add_argument("--runs-dir", default="runs", help="also serve every run folder found under this folder")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (0.0.0.0: every network interface, with a warning)")
    p.add_argument("--port", type=_port, default=7860, help="TCP port")
    p.add_argument("--share", action="store_true",
                   help="also open a public *.gradio.live link (anyone with it can use the app)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda …")
    p.set_defaults(func=run)


def _port(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be in 1..65535, got {text!r}")
    return value


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args) -> int:
    import sys

    from trilemma.errors import TrilemmaError

    try:
        import gradio  # noqa: F401
    except ImportError:
        raise TrilemmaError("the web app needs Gradio: pip install 'trilemma[ui]'") from None
    from trilemma.ui.app import launch
    from trilemma.ui.paths import ServedPaths
    from trilemma.utils.device import pick_device

    served = ServedPaths.from_args(args.run_dirs, args.runs_dir)
    if not served.roots:
        what = "is not a folder" if Path(args.runs_dir).exists() else "does not exist"
        raise TrilemmaError(f"no run folders to serve: give RUN_DIRs or a --runs-dir that exists "
                            f"({args.runs_dir!r} {what})")
    pick_device(args.device)                                   # a bad --device fails here, in one line
    check_listen(args.host, args.port)
    if not is_loopback(args.host):
        print(f"trilemma: warning: --host {args.host}: the app is reachable from other machines, without a login; "
              f"anyone who can connect can run the models and read the served run folders", file=sys.stderr)
    if args.share:
        print("trilemma: warning: --share: a public link is opened; anyone with it can use the app", file=sys.stderr)
    say(f"trilemma: serving {len(served.runs())} run folder(s) from {', '.join(map(str, served.roots))}")
    launch(served, host=args.host, port=args.port, share=args.share, device=args.device, block=True)
    return 0


def check_listen(host: str, port: int) -> None:
    """``--host``/``--port`` can be listened on (an address of this machine, a free port): one line otherwise,
    before Gradio starts (whose error blames the port for either)."""
    import socket

    from trilemma.errors import TrilemmaError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise TrilemmaError(f"--host {host}: not an address this machine can listen on ({e})") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as e:
            raise TrilemmaError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e}; "
                                f"another program on that port? choose another --port)") from None
