"""`gpt2kit tokenize`: show the ids and tokens of a text; --explain shows how BPE got there.

For gpt2 (and trained bpe) --explain prints the regex pre-split pieces, then for each piece
its UTF-8 bytes as GPT-2's printable byte symbols and every merge in rank order, like
minGPT's encode_and_show_work. For other kinds it prints the split pieces and their ids.
The work is the tokenizer's explain(); this module only prints it.
"""
from __future__ import annotations

import json
import sys


def register(sub) -> None:
    p = sub.add_parser("tokenize", help="show the token ids and pieces of a text (--explain: BPE step by step)",
                       description="Encode TEXT and print its ids and tokens. '-' reads the text from stdin.")
    p.add_argument("text", help="the text to encode, or - for stdin")
    p.add_argument("--tokenizer", default="gpt2", help="gpt2, a tokenizer/checkpoint dir, bpe:DIR or bert:vocab.txt (default: gpt2)")
    p.add_argument("--explain", action="store_true", help="show the pre-split pieces and each merge (gpt2, bpe) or the segmentation")
    p.add_argument("--ids-only", action="store_true", help="print only the ids, as a JSON list")
    p.add_argument("--allow-special", action="store_true", help="let special-token text (e.g. <|endoftext|>) be the special token")
    p.set_defaults(func=cmd_tokenize)


def _show(labels) -> str:
    return " ".join(json.dumps(s, ensure_ascii=False) for s in labels)


def cmd_tokenize(args) -> int:
    from gpt2kit.tokenization import get_tokenizer

    text = sys.stdin.read() if args.text == "-" else args.text
    tok = get_tokenizer(args.tokenizer)
    allowed = "all" if args.allow_special else "none_raise"
    ids = tok.encode(text, allowed_special=allowed)
    if args.ids_only:
        print(json.dumps(ids))
        return 0
    n_bytes = len(text.encode("utf-8", "replace"))
    print(f"{tok.kind} tokenizer: {len(ids)} tokens for {len(text)} characters, {n_bytes} UTF-8 bytes"
          + (f" ({n_bytes / len(ids):.2f} bytes/token)" if ids else ""))
    if args.explain:
        steps = tok.explain(text, allowed_special=allowed)
        (print_merges if any("merges" in s for s in steps) else print_split)(tok, steps)
    print(f"ids:    {ids}")
    print(f"tokens: {_show(tok.pieces(ids))}")
    return 0


def print_split(tok, steps: list[dict]) -> None:
    print(tok.split_doc.format(n=len(steps)) + ":")
    print("   " + _show(s.get("piece", s.get("special")) for s in steps))
    for s in steps:
        shown = json.dumps(s.get("piece", s.get("special")), ensure_ascii=False)
        print(f"   {shown:<12s} -> {_show(tok.pieces(s['ids']))}  {s['ids']}")
    print()


def print_merges(tok, steps: list[dict]) -> None:
    from gpt2kit.tokenization.base import bytes_label

    print("1. " + tok.split_doc.format(n=len(steps)) + ":")
    print("   " + _show(s.get("piece", s.get("special")) for s in steps))
    print("2. each piece becomes UTF-8 bytes, shown as GPT-2's printable byte symbols; then the adjacent pair")
    print("   with the lowest rank in the merge list merges, again and again, until no pair is in the list:")
    for k, s in enumerate(steps, 1):
        if "special" in s:
            print(f"\n   piece {k}: {json.dumps(s['special'])} is a special token -> id {s['ids'][0]}")
            continue
        print(f"\n   piece {k}: {json.dumps(s['piece'], ensure_ascii=False)}")
        print(f"     bytes    {s['piece'].encode('utf-8').hex(' ')}")
        print(f"     symbols  {' '.join(s['symbols'])}")
        for m, ((a, b), rank, after) in enumerate(s["merges"], 1):
            pair = f"{a} + {b}"
            print(f"     merge {m:2d}  rank {rank:5d}  {pair:<13s} -> {a + b:<9s} {' '.join(after)}")
        shown = [bytes_label(b) for b in s["bytes"]]
        print(f"     tokens   {_show(shown)}" + ("   (<hex>: part of a character)" if any(x.startswith("<") for x in shown) else ""))
        print(f"     ids: {s['ids']}")
    print()
