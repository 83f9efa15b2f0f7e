"""`gpt2kit tokenize`: show the ids and tokens of a text; --explain shows how BPE got there.

For gpt2 (and trained bpe) --explain prints the regex pre-split pieces, then for each piece
its UTF-8 bytes as GPT-2's printable byte symbols and every merge in rank order, like
minGPT's encode_and_show_work. For word and bert it prints the segmented words and their ids.
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


def label(tok, i: int) -> str:
    """A token as text: its vocabulary entry for bert, else its bytes (hex where not whole UTF-8)."""
    if tok.kind == "bert":
        return tok.tokens[i]
    return _bytes_label(tok.token_bytes(i))


def _show(labels) -> str:
    return " ".join(json.dumps(s, ensure_ascii=False) for s in labels)


def cmd_tokenize(args) -> int:
    from gpt2kit.tokenization import get_tokenizer

    text = sys.stdin.read() if args.text == "-" else args.text
    tok = get_tokenizer(args.tokenizer)
    ids = tok.encode(text, allowed_special="all" if args.allow_special else "none_raise")
    if args.ids_only:
        print(json.dumps(ids))
        return 0
    n_bytes = len(text.encode("utf-8", "replace"))
    print(f"{tok.kind} tokenizer: {len(ids)} tokens for {len(text)} characters, {n_bytes} UTF-8 bytes"
          + (f" ({n_bytes / len(ids):.2f} bytes/token)" if ids else ""))
    if args.explain:
        explain(tok, text, args.allow_special)
    print(f"ids:    {ids}")
    print(f"tokens: {_show(label(tok, i) for i in ids)}")
    return 0


def explain(tok, text: str, allow_special: bool) -> None:
    from gpt2kit.tokenization.base import _split_specials
    from gpt2kit.tokenization.reference_bpe import ReferenceBPE

    if tok.kind in ("gpt2", "bpe"):
        ref = ReferenceBPE() if tok.kind == "gpt2" else ReferenceBPE.from_hf(tok._hf)
        allowed = set(tok.special_tokens) if allow_special else set()
        parts = list(_split_specials(text, allowed)) if allowed else [(text, False)]
        steps = []
        for part, special in parts:
            steps.extend([{"special": part, "ids": [tok.special_tokens[part]]}] if special else ref.explain(part))
        print(f"1. the regex splits the text into {len(steps)} piece{'s' * (len(steps) != 1)}; merges never cross them:")
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
            shown = [_bytes_label(b) for b in s["bytes"]]
            print(f"     tokens   {_show(shown)}" + ("   (<hex>: part of a character)" if any(x.startswith("<") for x in shown) else ""))
            print(f"     ids: {s['ids']}")
        print()
        return
    if tok.kind in ("word", "bert"):
        from gpt2kit.tokenization.word import segment

        words = segment(text, tok.hmm) if tok.kind == "word" else tok.pieces(text)
        what = "jieba splits the text into" if tok.kind == "word" else "BERT normalizes and splits the text into"
        print(f"{what} {len(words)} words:")
        print("   " + _show(words))
        for w in words:
            ids = tok.encode_ordinary(w)
            print(f"   {json.dumps(w, ensure_ascii=False):<12s} -> {_show(label(tok, i) for i in ids)}  {ids}")
        print()
        return
    print(f"({tok.kind}: one token per character; nothing to explain)")


def _bytes_label(b: bytes) -> str:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return "<" + b.hex(" ") + ">"
