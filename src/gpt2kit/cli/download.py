"""`gpt2kit download`: fetch a GPT-2 release into the HF hub cache, with progress bars."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("download", help="fetch GPT-2 weights into the HF hub cache",
                       description="Download gpt2, gpt2-medium, gpt2-large or gpt2-xl (also 124M/355M/774M/1558M) into the HF cache.")
    p.add_argument("name", help="gpt2 | gpt2-medium | gpt2-large | gpt2-xl (or 124M | 355M | 774M | 1558M)")
    p.set_defaults(func=cmd_download)


def cmd_download(args) -> int:
    from gpt2kit.weights import download

    print(download(args.name))
    return 0
