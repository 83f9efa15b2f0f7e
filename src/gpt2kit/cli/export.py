"""`gpt2kit export MODEL --format hf|gguf|llmc --out PATH`: write a model for another tool."""
from __future__ import annotations

from .common import add_adapter_arg


def register(sub) -> None:
    p = sub.add_parser("export", help="export a model for transformers (hf), llama.cpp (gguf) or llm.c (llmc)",
                       description="Write a gpt2kit/HF model as an HF folder, a GGUF file for llama.cpp, or an llm.c .bin.")
    p.add_argument("model", help="gpt2kit checkpoint dir, HF-format dir or hub name (gpt2, ...)")
    p.add_argument("--format", required=True, choices=["hf", "gguf", "llmc"], help="target format")
    p.add_argument("--out", required=True, help="output folder (hf) or file (gguf, llmc)")
    p.add_argument("--tokenizer", default=None, help="tokenizer spec; default: the one saved with the model")
    add_adapter_arg(p)
    p.add_argument("--dtype", default=None,
                   help="weights: gguf f32 (default) | f16; llmc float32 (default) | bfloat16; hf keeps the model's dtype")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    import os

    from gpt2kit.errors import GPT2KitError
    from gpt2kit.extras import require
    from gpt2kit.loading import load

    if args.format == "gguf":
        require("gguf", "GGUF export")  # before the model loads
    hf_dtype = args.dtype if args.format == "hf" else None  # gguf/llmc --dtype is the file's, not the model's
    model, tok = load(args.model, args.tokenizer, dtype=hf_dtype, need_tokenizer=args.format == "gguf",
                      adapter=args.adapter)
    if args.format == "hf":
        from gpt2kit.interop.hf_export import export_hf

        export_hf(model, tok, args.out)
    elif args.format == "gguf":
        from gpt2kit.interop.gguf_export import export_gguf

        if os.path.isdir(args.out):
            raise GPT2KitError(f"--out {args.out} is a directory; GGUF export writes one file, e.g. --out model.gguf")
        export_gguf(model, tok, args.out, dtype=args.dtype or "f32")
    else:
        from gpt2kit.interop.llmc import write_model

        if os.path.isdir(args.out):
            raise GPT2KitError(f"--out {args.out} is a directory; llm.c export writes one file, e.g. --out model.bin")
        write_model(model, args.out, dtype=args.dtype or "float32")
    print(f"wrote {args.out} ({args.format})")
    return 0
