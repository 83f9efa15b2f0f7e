#!/bin/bash
# The FSDP checks that need a GPU (issue 13 item 3), for one CUDA device: FSDP x1 with bf16 params and
# fp32 reduce against a plain bf16 run, N->M resume, a DDP state resumed sharded, compile, and a
# 774M-shaped model. Run from the repository root: bash bench/fsdp_gpu_check.sh
export PYTHONPATH=$PWD/src
python() { "${PYTHON:-python3}" "$@"; }  # the GPU image has python3 only
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python -c "import torch, safetensors, tqdm, numpy; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'bf16', torch.cuda.is_bf16_supported())" || exit 1
STD=$(python -c "import sysconfig;print(sysconfig.get_paths()['stdlib'])")
cat $STD/argparse.py $STD/typing.py $STD/inspect.py > /tmp/corpus.txt
python -m gpt2kit prepare /tmp/corpus.txt --tokenizer char --out /tmp/d 2>&1 | tail -1
F="--data /tmp/d --n-layer 4 --n-head 4 --n-embd 128 --block-size 128 --batch-size 16 --eval-interval 20 --eval-iters 4 --dropout 0 --device cuda --no-progress --no-plot --lr-decay-iters 40 --always-save-checkpoint"
TR="python -m torch.distributed.run --standalone --nproc_per_node=1 -m gpt2kit train"
echo "== plain, one process, bf16 autocast, 40 iters"; python -m gpt2kit train --out /tmp/one $F --max-iters 40 2>&1 | tail -2
echo "== FSDP x1 bf16 params / fp32 reduce: 20 iters, then resume to 40"; $TR --out /tmp/fs $F --strategy fsdp --max-iters 20 2>&1 | grep -v Warn | tail -3
ls /tmp/fs/state/step-00000020 /tmp/fs/state/step-00000020/dcp
$TR --resume /tmp/fs --max-iters 40 2>&1 | tail -1
echo "== a DDP-format state resumed under FSDP"; python -m gpt2kit train --out /tmp/dd $F --max-iters 20 2>&1 | tail -1
$TR --resume /tmp/dd --max-iters 40 --strategy fsdp 2>&1 | tail -1
for r in one fs dd; do echo "-- $r"; cut -c1-80 /tmp/$r/metrics.jsonl; done
python - <<'PY'
import torch
from gpt2kit import load_model
a, b = load_model("/tmp/one"), load_model("/tmp/fs")
print("gathered dtype", next(b.parameters()).dtype)
x = torch.randint(0, a.config.vocab_size, (2, 64))
print("max |logits one - fsdp| (bf16 training both)", (a(x)[0] - b(x)[0]).abs().max().item())
PY
python -m gpt2kit generate --model /tmp/fs --max-new-tokens 20 --seed 0 "def " ; echo
echo "== FSDP + compile, 20 iters"; timeout 200 $TR --out /tmp/fc $F --strategy fsdp --compile --max-iters 20 2>&1 | grep -v Warn | tail -2
echo "== 774M-shaped (36 x 1280) FSDP x1, 3 iters, batch 4 x 1024"
timeout 200 $TR --out /tmp/big --data /tmp/d --n-layer 36 --n-head 20 --n-embd 1280 --block-size 1024 --batch-size 4 --max-iters 3 --eval-interval 3 --eval-iters 1 --device cuda --no-progress --no-plot --strategy fsdp 2>&1 | grep -v Warn | tail -3
ls -la /tmp/big /tmp/big/state/step-00000003/dcp 2>&1 | head -20
