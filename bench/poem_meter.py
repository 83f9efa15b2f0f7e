"""Share of poem lines in regular 5- or 7-character meter, from `gpt2kit generate` output or a corpus.

A verse line is a line with CJK text that ends in punctuation, minus titles (《...》), author
lines (作者) and sample separators. Its first clause is the characters before the first
punctuation mark; the line is "in meter" when that clause has 5 or 7 characters (五言/七言).
A poem is the text between separator lines (`%` in the corpus files, `=== SAMPLE n ===` in
`gpt2kit generate --num-samples` output); it is "regular" when it has 2+ verse lines and all of
them have the same length (律诗/绝句 keep one line length throughout).

    gpt2kit generate "《春望》" --model runs/poems --top-k 8 --num-samples 20 --seed 1 | python bench/poem_meter.py
    python bench/poem_meter.py ../shared/data/zh/tang300.txt          # the same measure on the training poems
    ... | python bench/poem_meter.py - --corpus tang300.txt song100.txt  # also: how many clauses are copied verbatim
"""
from __future__ import annotations

import re
import sys
from collections import Counter

PUNCT = "，。？！；：、,.?!;:"
CLAUSE = re.compile(f"[{re.escape(PUNCT)}]")
CJK = re.compile(r"[\u4e00-\u9fff]")


def verse_lines(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or "《" in line or "》" in line or line.startswith(("作者", "题目", "=", "%", "-")):
            continue
        if CJK.search(line) and line[-1] in PUNCT:
            out.append(line)
    return out


SEPARATOR = re.compile(r"^\s*(%|=+ SAMPLE \d+ =+)\s*$", re.MULTILINE)


def poems(text: str) -> list[list[str]]:
    """The verse lines of each poem (text between separator lines) that has any."""
    return [lines for part in SEPARATOR.split(text) if (lines := verse_lines(part))]


def regular(text: str) -> tuple[int, int]:
    """(poems of 2+ verse lines whose lines all have one length, poems of 2+ verse lines)."""
    ps = [p for p in poems(text) if len(p) >= 2]
    return sum(len({len(line) for line in p}) == 1 for p in ps), len(ps)


def meter(text: str) -> dict:
    lines = verse_lines(text)
    first = [len(CLAUSE.split(line, maxsplit=1)[0]) for line in lines]
    clauses = [len(c) for line in lines for c in CLAUSE.split(line) if c]
    return {
        "lines": len(lines),
        "lines_5_or_7": sum(n in (5, 7) for n in first),
        "share_lines": sum(n in (5, 7) for n in first) / len(lines) if lines else 0.0,
        "clauses": len(clauses),
        "share_clauses": sum(n in (5, 7) for n in clauses) / len(clauses) if clauses else 0.0,
        "first_clause_lengths": Counter(first).most_common(6),
    }


def copied(text: str, corpus: str) -> tuple[int, int]:
    """(clauses of 4+ characters found verbatim in the corpus, all such clauses): memorisation, not meter."""
    clauses = [c for line in verse_lines(text) for c in CLAUSE.split(line) if len(c) >= 4]
    return sum(c in corpus for c in clauses), len(clauses)


def main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sources", nargs="*", default=["-"], help="files of generated text or poems; - for stdin")
    ap.add_argument("--corpus", nargs="*", default=[], help="training files: also count clauses copied from them")
    args = ap.parse_args(argv)
    corpus = "".join(open(p, encoding="utf-8").read() for p in args.corpus)
    for src in args.sources:
        text = sys.stdin.read() if src == "-" else open(src, encoding="utf-8").read()
        m = meter(text)
        name = "stdin" if src == "-" else src
        print(f"{name}: {m['lines_5_or_7']}/{m['lines']} verse lines have 5 or 7 characters before the first punctuation "
              f"({m['share_lines']:.1%}); clauses of 5 or 7: {m['share_clauses']:.1%} of {m['clauses']}; "
              f"first-clause lengths (length, count): {m['first_clause_lengths']}")
        k, n = regular(text)
        ps = poems(text)
        print(f"  poems whose verse lines all have one length: {k}/{n} ({k / max(n, 1):.1%}) of the poems with 2+ verse lines; "
              f"verse lines per poem: {sum(map(len, ps)) / max(len(ps), 1):.2f} over {len(ps)} poems")
        if corpus:
            k, n = copied(text, corpus)
            print(f"  clauses of 4+ characters copied verbatim from the corpus: {k}/{n} ({k / max(n, 1):.1%})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
