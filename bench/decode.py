"""Decode speed on the CPU: gpt2kit beside HF transformers, CTranslate2 and llama.cpp, side by side.

One random GPT-2 124M (seed 0) is saved as a gpt2kit checkpoint and exported with gpt2kit's own
writers: an HF folder (read by HF, and converted by CTranslate2's own ct2-transformers-converter)
and a GGUF file (read by llama.cpp through llama-cpp-python; q8_0 and q4_0 made from it with
llama.cpp's quantize API). Every engine runs in its own worker process, so its peak RSS is its
own, and the parent asks them in turn (engines alternate, median of --repeat).

Decode rate excludes the prompt for every engine: each engine stamps the time at every decode step
(gpt2kit's and llama-cpp-python's generators, HF's streamer, CTranslate2's step callback), and
    run rate  = batch * (N - 1) / (t_N - t_1), the median over --repeat runs;
    step rate = batch / (the --step-quantile of all step times, pooled over the runs).
The run rate is the plain figure. The step rate is for a machine whose scheduler stalls a process
now and then (a 2-vCPU VM with busy neighbours): a stalled step lands in the slow tail, so a low
quantile still reads the engine's own speed; on a quiet machine both agree. --rate picks the one
the ratios use; the table always shows both. The contention case always uses the run rate.

    python bench/decode.py [--repeat 3] [--new-tokens 128] [--rate run|step] [--engines gpt2kit:float32,hf,...]

Cases: batch 1 greedy, batch 8 top-k 40 sampling, and batch 1 greedy again while one other
CPU-bound process runs (the thread-contention case). Peers that are not installed are skipped,
with the install command printed (`pip install -e ".[bench]"`; llama-cpp-python compiles
llama.cpp, ~15 minutes on 2 cores).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple

sys.path.insert(0, os.path.dirname(__file__))
from common import table, timeit  # noqa: E402

# +fp32acts: int8/int4 weights on fp32 activations (GPT2KIT_INT8_ACTIVATIONS=0), beside the default int8 ones (VNNI)
GPT2KIT = ["gpt2kit:float32", "gpt2kit:bfloat16", "gpt2kit:int8", "gpt2kit:int8+fp32acts", "gpt2kit:int4", "gpt2kit:int4+fp32acts"]
PEERS = ["hf", "ct2:float32", "ct2:int8", "llama:f32", "llama:q8_0", "llama:q4_0"]
PROMPT = [(i * 7919 + 13) % 50257 for i in range(32)]  # fixed ids, the same for every engine
N_PARAMS = 124_439_808  # GPT-2 124M, the head tied to the embedding


# -- workers: one engine each, answering {"batch", "n", "sample"} with row-0 tokens and step times ---------
# Each run(batch, n, sample, stamp) calls stamp() once per decode step, right after the step's tokens exist.

class Runner:
    def __init__(self, spec: str, d: str):
        kind, _, variant = spec.partition(":")
        self.run = getattr(self, f"_load_{kind}")(variant, d)

    def _load_gpt2kit(self, variant, d):
        dtype, _, acts = variant.partition("+")
        if acts == "fp32acts":
            os.environ["GPT2KIT_INT8_ACTIVATIONS"] = "0"  # this worker process only
        import gpt2kit

        model = gpt2kit.load_model(os.path.join(d, "gpt2kit"), dtype=dtype, inference=True)

        def run(batch, n, sample, stamp):
            kw = dict(temperature=1.0, top_k=40) if sample else dict(temperature=0.0)
            rows = []
            for r in gpt2kit.generate(model, PROMPT, n, num_samples=batch, seed=0, **kw):
                stamp()
                rows.append(r if batch > 1 else [r])
            return [r[0] for r in rows]
        return run

    def _load_hf(self, _variant, d):
        import torch
        from transformers import GPT2LMHeadModel
        from transformers.generation.streamers import BaseStreamer

        hf = GPT2LMHeadModel.from_pretrained(os.path.join(d, "hf")).eval()

        class Stamps(BaseStreamer):  # generate() puts the prompt first, then each step's new tokens
            def __init__(self, stamp):
                self.stamp, self.prompt_seen = stamp, False

            def put(self, value):
                if self.prompt_seen:
                    self.stamp()
                self.prompt_seen = True

            def end(self):
                pass

        def run(batch, n, sample, stamp):
            with torch.inference_mode():
                out = hf.generate(torch.tensor([PROMPT] * batch), attention_mask=torch.ones(batch, 32, dtype=torch.long),
                                  max_new_tokens=n, min_new_tokens=n, do_sample=sample, top_k=40 if sample else None,
                                  pad_token_id=50256, streamer=Stamps(stamp))
            return out[0, 32:].tolist()
        return run

    def _load_ct2(self, compute_type, d):
        import ctranslate2

        gen = ctranslate2.Generator(os.path.join(d, "ct2"), device="cpu", compute_type=compute_type,
                                    intra_threads=os.cpu_count() or 1)
        with open(os.path.join(d, "ct2", "vocabulary.json")) as f:
            vocab = json.load(f)
        start = [vocab[t] for t in PROMPT]

        def run(batch, n, sample, stamp):
            on_step = lambda r: stamp() if r.batch_id == 0 else None  # called per row per step; row 0 marks the step
            res = gen.generate_batch([start] * batch, max_length=n, min_length=n, include_prompt_in_result=False,
                                     sampling_topk=40 if sample else 1, callback=on_step)
            return res[0].sequences_ids[0]
        return run

    def _load_llama(self, quant, d):
        from llama_cpp import Llama

        n = os.cpu_count() or 1
        with quiet_stderr():  # the model loader logs its metadata even with verbose=False
            llm = Llama(model_path=os.path.join(d, f"gpt2-{quant}.gguf"), n_ctx=512, n_threads=n, n_threads_batch=n, verbose=False)

        def run(batch, n, sample, stamp):
            if batch != 1:
                return None  # llama-cpp-python's API decodes one sequence at a time
            llm.reset()
            out = []
            for tok in llm.generate(PROMPT, top_k=40 if sample else 1, temp=1.0 if sample else 0.0, reset=True):
                stamp()
                out.append(tok)
                if len(out) == n:
                    break
            return out
        return run


RUNTIME = {"gpt2kit": ["torch", "gpt2kit"], "hf": ["torch", "transformers"], "ct2": ["ctranslate2"], "llama": ["llama_cpp"]}


def vm_hwm_mib() -> float:
    return next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM")) / 1024


def worker(spec: str, d: str) -> None:
    import importlib

    for mod in RUNTIME[spec.split(":")[0]]:
        importlib.import_module(mod)
    runtime = vm_hwm_mib()  # the interpreter and the engine's libraries, before any model
    engine = Runner(spec, d)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        stamps = []
        tokens = engine.run(cmd["batch"], cmd["n"], cmd["sample"], lambda: stamps.append(time.perf_counter()))
        steps = [b - a for a, b in zip(stamps, stamps[1:])]  # the first stamp follows the prompt: excluded
        print(json.dumps({"steps": steps if tokens is not None else None, "tokens": tokens, "rss_mb": vm_hwm_mib(),
                          "runtime_mb": runtime}), flush=True)


class Worker:
    def __init__(self, spec: str, d: str):
        self.spec = spec
        self.p = subprocess.Popen([sys.executable, __file__, "--worker", spec, "--dir", d], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, bufsize=1)
        self._read()

    def _read(self) -> dict:
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.spec} exited (code {self.p.wait()}); its error is above")
        return json.loads(line)

    def ask(self, batch: int, n: int, sample: bool) -> dict:
        self.p.stdin.write(json.dumps({"batch": batch, "n": n, "sample": sample}) + "\n")
        return self._read()

    def close(self) -> None:
        self.p.stdin.close()
        self.p.wait()


# -- the parent: models, ceiling, cases --------------------------------------------------------------

def available(spec: str) -> str | None:
    """None when the engine can run here, else why not."""
    import importlib.util

    kind = spec.split(":")[0]
    need = {"ct2": ("ctranslate2", 'pip install -e ".[bench]"'), "llama": ("llama_cpp", 'pip install -e ".[bench]" llama-cpp-python (compiles llama.cpp, ~15 min)'),
            "hf": ("transformers", "pip install transformers")}.get(kind)
    if need and importlib.util.find_spec(need[0]) is None:
        return f"skipped: {need[0]} is not installed ({need[1]})"
    return None


def make_models(d: str, specs: list[str]) -> None:
    import torch

    import gpt2kit
    from gpt2kit.config import preset
    from gpt2kit.interop.gguf_export import export_gguf
    from gpt2kit.interop.hf_export import export_hf
    from gpt2kit.tokenization import get_tokenizer

    torch.manual_seed(0)
    model, tok = gpt2kit.GPT(preset("gpt2")).eval(), get_tokenizer("gpt2")
    gpt2kit.save_model(model, os.path.join(d, "gpt2kit"), tokenizer=tok)
    export_hf(model, tok, os.path.join(d, "hf"))
    if any(s.startswith("ct2") for s in specs):
        subprocess.run(["ct2-transformers-converter", "--model", os.path.join(d, "hf"), "--output_dir", os.path.join(d, "ct2")],
                       check=True, capture_output=True)
    if any(s.startswith("llama") for s in specs):
        import llama_cpp

        f32 = os.path.join(d, "gpt2-f32.gguf")
        export_gguf(model, tok, f32)
        for name, ftype in (("q8_0", llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0), ("q4_0", llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0)):
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype = ftype
            params.nthread = os.cpu_count() or 1
            with quiet_stderr():  # llama.cpp logs every tensor
                rc = llama_cpp.llama_model_quantize(f32.encode(), os.path.join(d, f"gpt2-{name}.gguf").encode(), params)
            if rc != 0:
                raise RuntimeError(f"llama.cpp could not quantize to {name}")


class quiet_stderr:
    """Silence file descriptor 2 (C libraries' logs) for a block."""

    def __enter__(self):
        sys.stderr.flush()
        self.saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)

    def __exit__(self, *exc):
        os.dup2(self.saved, 2)
        os.close(self.saved)


def ceiling(weight_bytes: int) -> dict:
    """Memory-read GB/s on this machine: a streaming read of a weight-sized fp32 tensor, and a weight-sized fp32
    matrix-vector product with torch's default (MKL) and oneDNN kernels; each / weight bytes = a tokens/s ceiling."""
    import torch

    def best(fn):
        return timeit(fn, repeat=7, stat=min)

    w, x = torch.randn(weight_bytes // 4 // 768, 768), torch.randn(1, 768)
    out = {"read": weight_bytes / best(lambda: w.sum()) / 1e9,
           "matvec (MKL)": weight_bytes / best(lambda: torch.nn.functional.linear(x, w)) / 1e9}
    if torch.backends.mkldnn.is_available():
        p = torch.ops.mkldnn._reorder_linear_weight(w, 1)
        out["matvec (oneDNN)"] = weight_bytes / best(lambda: torch.ops.mkldnn._linear_pointwise(x, p, None, "none", [], "")) / 1e9
    return out


class Result(NamedTuple):
    run: float  # tokens/s: median over the runs of batch * (N - 1) / (t_N - t_1)
    step: float  # tokens/s: batch / a low quantile of the pooled step times
    tokens: list  # row 0's tokens in the last run
    rss_mb: float  # the worker's peak RSS
    runtime_mb: float  # its RSS before the model was loaded

    def rate(self, which: str) -> float:
        return getattr(self, which)


def measure(workers: dict, batch: int, sample: bool, n: int, repeat: int, quantile: float) -> dict[str, Result]:
    """spec -> Result over `repeat` runs of n new tokens each; engines alternate.
    An engine whose worker dies (a peer's crash) is reported and left out of this and later cases."""
    runs = {s: [] for s in workers}
    last = {}

    def ask(s, w):
        try:
            return w.ask(batch, n, sample)
        except RuntimeError as e:
            print(f"{s} left out: {e}", flush=True)
            del workers[s]
            runs.pop(s, None)

    for s, w in list(workers.items()):  # warm-up
        last[s] = ask(s, w)
    for _ in range(repeat):
        for s, w in list(workers.items()):
            res = ask(s, w)
            if res:
                last[s] = res
                runs[s].append(res["steps"])
            time.sleep(0.5)  # let the worker's threads go idle (Intel OpenMP spins 200 ms) before the next engine runs
    out = {}
    for s, r in runs.items():
        pooled = sorted(t for steps in r for t in steps)
        out[s] = Result(statistics.median(batch * len(steps) / sum(steps) for steps in r),
                        batch / pooled[round(quantile * (len(pooled) - 1))], last[s]["tokens"], last[s]["rss_mb"], last[s]["runtime_mb"])
    return out


def agreement(tokens, ref) -> str:
    if tokens is None or ref is None:
        return ""
    k = next((i for i, (a, b) in enumerate(zip(tokens, ref)) if a != b), min(len(tokens), len(ref)))
    return f"{k}/{len(ref)}"


def report(case: str, res: dict[str, Result], rate: str, ceil_tps: float, weight_mib: float, ref_tokens=None) -> list[list]:
    hf = res["hf"].rate(rate) if "hf" in res else None
    peers = [v.rate(rate) for s, v in res.items() if not s.startswith("gpt2kit") and s != "hf"]
    best_peer = max(peers) if peers else None
    rows = []
    for s, r in res.items():
        tps, tokens, rss, runtime = r.rate(rate), r.tokens, r.rss_mb, r.runtime_mb
        rows.append([case, s, f"{r.run:.1f}", f"{r.step:.1f}", f"{tps / hf:.2f}x" if hf else "", f"{tps / best_peer:.2f}x" if best_peer else "",
                     f"{tps / ceil_tps:.0%}", agreement(tokens, ref_tokens), f"{rss:.0f}", f"{rss - runtime:.0f} ({(rss - runtime) / weight_mib:.2f}x)"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--engines", default=",".join(GPT2KIT + PEERS), help="comma-separated: " + ",".join(GPT2KIT + PEERS))
    ap.add_argument("--rate", choices=["run", "step"], default="run", help="which rate the ratios use (both are shown): "
                    "run = median of whole runs; step = from the --step-quantile step time, for a machine that stalls processes")
    ap.add_argument("--step-quantile", type=float, default=0.1, help="quantile of the pooled step times for the step rate (default 0.1)")
    ap.add_argument("--no-contention", action="store_true", help="skip the run beside a CPU-bound process")
    ap.add_argument("--profile", metavar="ENGINE", help="instead: profile one gpt2kit engine's b1 greedy decode (torch.profiler, ms per token by op)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.new_tokens < 2:
        ap.error(f"--new-tokens must be at least 2 (the rate is timed from the first new token to the last), got {args.new_tokens}")
    if not 0 <= args.step_quantile <= 1:
        ap.error(f"--step-quantile must be in [0, 1], got {args.step_quantile}")
    if args.worker:
        return worker(args.worker, args.dir)
    if args.profile:
        return profile(args.profile, args.new_tokens)

    specs = []
    for s in args.engines.split(","):
        why = available(s)
        print(f"{s}: {why}") if why else specs.append(s)
    weight_bytes, N = N_PARAMS * 4, args.new_tokens
    weight_mib = weight_bytes / 2**20
    ceil_tps = print_machine(weight_bytes)
    with tempfile.TemporaryDirectory() as d:
        make_models(d, specs)
        workers = {s: Worker(s, d) for s in specs}
        try:
            q, rate = args.step_quantile, args.rate
            header = ["case", "engine", "run tok/s", f"p{q * 100:g} step tok/s", "vs HF", "vs best peer", "of ceiling", "greedy = ref", "peak RSS MiB", "of it, model MiB (x fp32 weights)"]
            print(f"\nGPT-2 124M random weights, 32-token prompt, {N} new tokens, decode rate (prompt excluded); run = median of {args.repeat} runs, "
                  f"step = batch / the p{q * 100:g} of their pooled step times; ratios and ceiling use the {rate} rate; "
                  f"greedy = ref: tokens equal to HF's (else gpt2kit fp32's) greedy run before the first difference; "
                  f"weights {weight_mib:.0f} MiB fp32; model MiB = peak RSS minus the RSS of the interpreter and the engine's libraries before loading")
            # each case prints as soon as it is measured, so a run cut short still leaves its finished cases
            b1 = measure(workers, 1, False, N, args.repeat, q)
            ref = next((b1[s].tokens for s in ("hf", "gpt2kit:float32") if s in b1), None)
            print(table(report("b1 greedy", b1, rate, ceil_tps, weight_mib, ref), header), flush=True)
            b8_workers = {s: w for s, w in workers.items() if not s.startswith("llama")}
            b8 = measure(b8_workers, 8, True, N, args.repeat, q)
            print(table(report("b8 top-k 40", b8, rate, ceil_tps, weight_mib), header), flush=True)
            if not args.no_contention:
                contention(workers, b1, N, args.repeat, q)
        finally:
            for w in workers.values():
                if w.p.poll() is None:
                    w.close()
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


def print_machine(weight_bytes: int) -> float:
    """Print the versions, threads, load and memory bandwidth; return the fp32 ceiling in tok/s (the streaming read)."""
    import torch

    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f} at start")
    bw = ceiling(weight_bytes)
    ceil_tps = bw["read"] * 1e9 / weight_bytes
    print("memory bandwidth: " + ", ".join(f"{k} {v:.1f} GB/s ({v * 1e9 / weight_bytes:.1f} tok/s)" for k, v in bw.items())
          + f"; fp32 ceiling used below: {ceil_tps:.1f} tok/s (the streaming read over {weight_bytes / 1e6:.0f} MB of weights)")
    return ceil_tps


def profile(spec: str, n: int) -> None:
    """Where a gpt2kit decode step's time goes: self CPU ms per generated token for the top ops, and the wall time."""
    from torch.profiler import profile as torch_profile

    with tempfile.TemporaryDirectory() as d:
        make_models(d, [spec])
        engine = Runner(spec, d).run
    run = lambda *args: engine(*args, lambda: None)  # no step stamps here
    run(1, n, False)  # warm-up
    t = time.perf_counter()
    run(1, n, False)
    wall = (time.perf_counter() - t) / n
    with torch_profile() as prof:
        run(1, n, False)
    ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in ops) / 1e3 / n
    print(f"{spec}, b1 greedy, {n} tokens after a 32-token prompt: {wall * 1e3:.2f} ms per token without the profiler "
          f"({1 / wall:.1f} tok/s); under it, torch ops take {total:.2f} ms per token:")
    rows = [[e.key, f"{e.self_cpu_time_total / 1e3 / n:.3f}", f"{e.count / n:.0f}", f"{e.self_cpu_time_total / 1e3 / n / total:.0%}"] for e in ops[:12]]
    print(table(rows, ["op", "ms/token", "calls/token", "share"]))


def contention(workers: dict, quiet: dict[str, Result], n: int, repeat: int, quantile: float) -> None:
    """Whole-run rates only, whatever --rate says: contention slows every step, and a low step quantile would hide it."""
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.0)
        busy = measure(workers, 1, False, n, repeat, quantile)
    finally:
        hog.kill()
    rows = [[s, f"{quiet[s].run:.1f}", f"{busy[s].run:.1f}", f"{busy[s].run / quiet[s].run:.0%}"] for s in busy if s in quiet]
    print("\nb1 greedy with one other CPU-bound process running (python busy loop), each engine at its default threads, run rate:")
    print(table(rows, ["engine", "quiet tok/s", "contended tok/s", "kept"]))


if __name__ == "__main__":
    main()
