#!/usr/bin/env python3
"""Trains the built-in demo model: a small Kimi Linear (KDA + MLA + MoE with a shared expert) on tinyshakespeare.

Runs on the GPU machine (PyTorch + transformers' native `KimiLinearForCausalLM`); nothing else is needed. Inputs come
from tools/KimiLinear.BpeTrainer (`--data`: train.ids / val.ids int32, split.json, prompts.json, plus the
tokenizer files it wrote into the model directory and a copy of the corpus). Outputs under `--out`:

  model/config.json, model/model.safetensors   the checkpoint in the published Kimi format (names, shapes, dtypes)
  model/training_log.txt                       the run, with validation loss per token and per character
  reference.safetensors                        float32 logits of the reference prompts and a greedy continuation
  best_state.pt                                the best weights under transformers' own names (a fallback only)
  summary.json                                 every check and its outcome

Order, so that a mistake costs seconds rather than the whole run:
  1. the tensor layout this script writes is checked against the published-format fixture (tests' tiny model), and
     transformers' float32 logits on that fixture against its golden logits;
  2. the mapping between transformers' internal tensors and the published names is discovered, not assumed: a probe
     checkpoint whose every element holds its own index is loaded through transformers' own conversion, which says
     where each published element lands (this survives renames, fused q/k/v convolutions and stacked experts);
  3. a few training steps and one evaluation (smoke), then the timed training run, keeping the best validation loss;
  4. export, reload through transformers, bit-exact comparison, reference logits.
The script exits non-zero if any check failed, after writing everything it could.
"""
import argparse
import copy
import json
import math
import os
import re
import shutil
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

START = time.time()
SEQ_LEN = 256


def log(message):
    print(f"[{time.time() - START:7.1f}s] {message}", flush=True)


class Checks:
    """Named pass/fail results; a failure is printed at once and makes the script exit non-zero at the end."""

    def __init__(self):
        self.results = []

    def record(self, name, ok, detail):
        self.results.append({"check": name, "ok": bool(ok), "detail": detail})
        print(f"{'CHECK ok    ' if ok else 'CHECK FAILED'} {name}: {detail}", flush=True)
        return ok

    @property
    def failed(self):
        return [r for r in self.results if not r["ok"]]


class Fatal(Exception):
    """A failure after which nothing useful can follow."""


# ----------------------------------------------------------------------------------------------------------------
# The published checkpoint layout (tensor names, shapes, dtypes), from config.json's published field names
# ----------------------------------------------------------------------------------------------------------------

def published_layout(cfg):
    """name -> (shape, 'bf16' | 'f32') for a Kimi Linear config.json. A_log and dt_bias are fp32, the rest bf16."""
    d, vocab, layers = cfg["hidden_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    lin = cfg["linear_attn_config"]
    heads, head_dim, conv = lin["num_heads"], lin["head_dim"], lin["short_conv_kernel_size"]
    kda = {n - 1 for n in lin["kda_layers"]}
    mla = {n - 1 for n in lin["full_attn_layers"]}
    mla_heads = cfg["num_attention_heads"]
    nope, rope, v_dim, lora = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"], cfg["kv_lora_rank"]
    dense_width, experts, expert_width = cfg["intermediate_size"], cfg["num_experts"], cfg["moe_intermediate_size"]
    shared_width = expert_width * cfg["num_shared_experts"]
    first_dense = cfg["first_k_dense_replace"]
    bf, f32 = "bf16", "f32"
    out = {"model.embed_tokens.weight": ((vocab, d), bf)}
    for n in range(layers):
        p = f"model.layers.{n}."
        out[p + "input_layernorm.weight"] = ((d,), bf)
        out[p + "post_attention_layernorm.weight"] = ((d,), bf)
        a = p + "self_attn."
        if n in kda:
            hk = heads * head_dim
            for x in "qkv":
                out[a + f"{x}_proj.weight"] = ((hk, d), bf)
                out[a + f"{x}_conv1d.weight"] = ((hk, 1, conv), bf)
            out[a + "f_a_proj.weight"] = ((head_dim, d), bf)
            out[a + "f_b_proj.weight"] = ((hk, head_dim), bf)
            out[a + "g_a_proj.weight"] = ((head_dim, d), bf)
            out[a + "g_b_proj.weight"] = ((hk, head_dim), bf)
            out[a + "b_proj.weight"] = ((heads, d), bf)
            out[a + "A_log"] = ((1, 1, heads, 1), f32)
            out[a + "dt_bias"] = ((hk,), f32)
            out[a + "o_norm.weight"] = ((head_dim,), bf)
            out[a + "o_proj.weight"] = ((d, hk), bf)
        elif n in mla:
            out[a + "q_proj.weight"] = ((mla_heads * (nope + rope), d), bf)
            out[a + "kv_a_proj_with_mqa.weight"] = ((lora + rope, d), bf)
            out[a + "kv_a_layernorm.weight"] = ((lora,), bf)
            out[a + "kv_b_proj.weight"] = ((mla_heads * (nope + v_dim), lora), bf)
            out[a + "o_proj.weight"] = ((d, mla_heads * v_dim), bf)
        else:
            raise Fatal(f"layer {n + 1} (1-based) is in neither kda_layers nor full_attn_layers")
        if n < first_dense:
            m = p + "mlp."
            out[m + "gate_proj.weight"] = ((dense_width, d), bf)
            out[m + "up_proj.weight"] = ((dense_width, d), bf)
            out[m + "down_proj.weight"] = ((d, dense_width), bf)
        else:
            m = p + "block_sparse_moe."
            out[m + "gate.weight"] = ((experts, d), bf)
            out[m + "gate.e_score_correction_bias"] = ((experts,), bf)
            for e in range(experts):
                out[m + f"experts.{e}.w1.weight"] = ((expert_width, d), bf)
                out[m + f"experts.{e}.w2.weight"] = ((d, expert_width), bf)
                out[m + f"experts.{e}.w3.weight"] = ((expert_width, d), bf)
            out[m + "shared_experts.gate_proj.weight"] = ((shared_width, d), bf)
            out[m + "shared_experts.up_proj.weight"] = ((shared_width, d), bf)
            out[m + "shared_experts.down_proj.weight"] = ((d, shared_width), bf)
    out["model.norm.weight"] = ((d,), bf)
    out["lm_head.weight"] = ((vocab, d), bf)
    return out


def demo_config(tiny_cfg, split):
    """The demo model's config.json: the fixture's published fields and order, with the demo's sizes."""
    bpe = split["bpe_ranks"]
    cfg = copy.deepcopy(tiny_cfg)
    cfg.update({
        "vocab_size": bpe + 256,
        "bos_token_id": bpe + 0,    # [BOS]
        "eos_token_id": bpe + 2,    # <|im_end|>, as Kimi's config names it
        "pad_token_id": bpe + 255,  # [PAD]
        "hidden_size": 256,
        "num_hidden_layers": 4,
        "linear_attn_config": {"full_attn_layers": [4], "head_dim": 64, "kda_layers": [1, 2, 3], "num_heads": 4,
                               "short_conv_kernel_size": 4},
        "first_k_dense_replace": 1,
        "intermediate_size": 512,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "head_dim": 64,
        "qk_nope_head_dim": 32,
        "qk_rope_head_dim": 16,
        "v_head_dim": 32,
        "kv_lora_rank": 64,
        "mla_use_nope": True,
        "q_lora_rank": None,
        "num_experts": 8,
        "num_experts_per_token": 2,
        "moe_intermediate_size": 128,
        "num_shared_experts": 1,
        "moe_router_activation_func": "sigmoid",
        "moe_renormalize": True,
        "routed_scaling_factor": 2.446,
        "num_expert_group": 1,
        "topk_group": 1,
        "model_max_length": 4096,
        "tie_word_embeddings": False,
        "dtype": "bfloat16",
    })
    return cfg


# ----------------------------------------------------------------------------------------------------------------
# Checks against the published-format fixture
# ----------------------------------------------------------------------------------------------------------------

def rel_err(out, ref):
    return ((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def check_fixture(tiny_dir, checks):
    from safetensors import safe_open
    from transformers import KimiLinearForCausalLM

    cfg = json.loads((tiny_dir / "config.json").read_text())
    layout = published_layout(cfg)
    found = {}
    for f in sorted(tiny_dir.glob("model-*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for k in st.keys():
                t = st.get_tensor(k)
                found[k] = (tuple(t.shape), {torch.bfloat16: "bf16", torch.float32: "f32"}.get(t.dtype, str(t.dtype)))
    same = found == {k: (tuple(s), dt) for k, (s, dt) in layout.items()}
    if not same:
        missing = sorted(set(layout) - set(found))[:10]
        extra = sorted(set(found) - set(layout))[:10]
        differ = [k for k in layout if k in found and found[k] != (tuple(layout[k][0]), layout[k][1])][:10]
        checks.record("layout matches the published fixture", False, f"missing {missing}, extra {extra}, differ {differ}")
        raise Fatal("the published layout this script writes does not match the fixture")
    checks.record("layout matches the published fixture", True, f"{len(found)} tensors, names, shapes and dtypes")

    model = KimiLinearForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32).eval()
    golden = {}
    with safe_open(str(tiny_dir / "golden.safetensors"), framework="pt") as st:
        for k in st.keys():
            golden[k] = st.get_tensor(k)
    worst = 0.0
    with torch.no_grad():
        for n in range(5):
            if f"case{n}.input_ids" not in golden:
                break
            ids = golden[f"case{n}.input_ids"].long()[None]
            out = model(input_ids=ids, use_cache=False).logits[0].float()
            worst = max(worst, rel_err(out, golden[f"case{n}.logits"]))
    checks.record("transformers reproduces the fixture's golden logits", worst <= 1e-4, f"worst relative error {worst:.2e}")


# ----------------------------------------------------------------------------------------------------------------
# Internal <-> published mapping, discovered through transformers' own checkpoint conversion
# ----------------------------------------------------------------------------------------------------------------

class Mapping:
    """Where every element of every published tensor lives in transformers' state dict, and back."""

    def __init__(self, layout, offsets, total, entries, shapes, skipped):
        self.layout = layout        # published name -> (shape, dtype tag)
        self.offsets = offsets      # published name -> (first global index, element count)
        self.total = total          # elements in all published tensors
        self.entries = entries      # internal name -> int64 global indices of its elements, flattened
        self.shapes = shapes        # internal name -> shape
        self.skipped = skipped      # internal names not loaded from the checkpoint (derived buffers)

    def to_published(self, state):
        flat = torch.empty(self.total, dtype=torch.float32)
        for name, ids in self.entries.items():
            flat[ids] = state[name].detach().float().cpu().flatten()
        out = {}
        for name, (shape, dt) in self.layout.items():
            start, count = self.offsets[name]
            t = flat[start:start + count].reshape(shape).clone()
            out[name] = t.to(torch.bfloat16) if dt == "bf16" else t.contiguous()
        return out

    def to_internal(self, published):
        flat = torch.empty(self.total, dtype=torch.float32)
        for name, (shape, _) in self.layout.items():
            start, count = self.offsets[name]
            flat[start:start + count] = published[name].float().flatten()
        return {name: flat[ids].reshape(self.shapes[name]).clone() for name, ids in self.entries.items()}


def write_checkpoint(directory, cfg, tensors, metadata=None):
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt", **(metadata or {})})


def load_through_transformers(directory, checks, what):
    from transformers import KimiLinearForCausalLM

    model, info = KimiLinearForCausalLM.from_pretrained(str(directory), dtype=torch.float32, output_loading_info=True)
    log(f"{what}: loading info {({k: len(v) if hasattr(v, '__len__') else v for k, v in info.items()})}")
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")}
    if problems:
        checks.record(f"{what} loads with every tensor used", False, json.dumps({k: sorted(map(str, v))[:12] for k, v in problems.items()}))
        raise Fatal(f"{what} does not load cleanly through transformers")
    checks.record(f"{what} loads with every tensor used", True, "no missing, unexpected or mismatched keys")
    return model.eval()


def discover_mapping(cfg, work, checks):
    layout = published_layout(cfg)
    offsets, tensors, start = {}, {}, 0
    for name, (shape, _) in layout.items():
        count = math.prod(shape)
        offsets[name] = (start, count)
        tensors[name] = torch.arange(start, start + count, dtype=torch.float64).to(torch.float32).reshape(shape)
        start += count
    if start >= 2 ** 24:
        raise Fatal(f"{start} elements: float32 cannot hold every index exactly")
    probe_dir = work / "probe"
    write_checkpoint(probe_dir, cfg, tensors)
    model = load_through_transformers(probe_dir, checks, "the index probe")
    params = {n for n, _ in model.named_parameters()}
    entries, shapes, skipped = {}, {}, []
    for name, t in model.state_dict().items():
        v = t.detach().double().flatten()
        is_index = bool(torch.all(v == v.round())) and v.numel() > 0 and v.min() >= 0 and v.max() < start
        if not is_index:
            if name in params:
                checks.record("every parameter comes from the checkpoint", False, f"{name} holds values that are no element of the probe")
                raise Fatal("transformers transforms a tensor arithmetically on load; the mapping cannot be inverted")
            skipped.append(name)
            continue
        entries[name], shapes[name] = v.long(), tuple(t.shape)
    hits = torch.bincount(torch.cat(list(entries.values())), minlength=start)
    bad = [n for n, (s, c) in offsets.items() if not torch.all(hits[s:s + c] == 1)]
    if bad:
        checks.record("internal tensors cover every published element once", False, f"not exactly once: {bad[:10]}")
        raise Fatal("the conversion is not a one-to-one rearrangement")
    checks.record("internal tensors cover every published element once", True,
                  f"{len(entries)} internal tensors <- {len(layout)} published tensors ({start:,} elements); derived buffers skipped: {skipped}")
    return Mapping(layout, offsets, start, entries, shapes, skipped), model.config


# ----------------------------------------------------------------------------------------------------------------
# Model set-up: initialisation, residual dropout, router load balancing
# ----------------------------------------------------------------------------------------------------------------

def initialise(model, std=0.02):
    """Initialises every weight explicitly, so the result does not depend on the library's own init."""
    done = set()
    for module in model.modules():
        cls = type(module).__name__
        own = dict(module.named_parameters(recurse=False))
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            torch.nn.init.normal_(module.weight, 0.0, std)
            done.add(id(module.weight))
        elif isinstance(module, torch.nn.Conv1d):
            bound = 1.0 / math.sqrt(module.kernel_size[0])  # depthwise: fan-in is the kernel width
            torch.nn.init.uniform_(module.weight, -bound, bound)
            done.add(id(module.weight))
        elif "RMSNorm" in cls and "weight" in own:
            torch.nn.init.ones_(own["weight"])  # the published norms scale by w (not 1 + w)
            done.add(id(own["weight"]))
        elif hasattr(module, "e_score_correction_bias"):
            torch.nn.init.zeros_(module.e_score_correction_bias)
            for p in own.values():
                torch.nn.init.normal_(p, 0.0, std)
                done.add(id(p))
        elif "Expert" in cls:
            for p in own.values():
                torch.nn.init.normal_(p, 0.0, std)
                done.add(id(p))
        if "A_log" in own:
            # per-head decay rates A in [1, 16], as Kimi/FLA initialise them
            with torch.no_grad():
                own["A_log"].copy_(torch.empty_like(own["A_log"]).uniform_(1, 16).log())
            done.add(id(own["A_log"]))
        if "dt_bias" in own:
            # inverse softplus of dt log-uniform in [1e-3, 1e-1] (Mamba/FLA): slow decay at the start
            with torch.no_grad():
                dt = torch.exp(torch.empty_like(own["dt_bias"]).uniform_(math.log(1e-3), math.log(1e-1))).clamp_min(1e-4)
                own["dt_bias"].copy_(dt + torch.log(-torch.expm1(-dt)))
            done.add(id(own["dt_bias"]))
    left = [n for n, p in model.named_parameters() if id(p) not in done]
    for n, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise Fatal(f"parameter {n} is not finite after initialisation")
    return left


def add_residual_dropout(model, p):
    """Dropout on the embeddings and on each token mixer's and channel mixer's output (GPT-2's residual dropout)."""

    def hook(module, args, output):
        if not module.training:
            return None
        if isinstance(output, tuple):
            return (F.dropout(output[0], p, True),) + tuple(output[1:])
        if torch.is_tensor(output):
            return F.dropout(output, p, True)
        return None

    names = []
    for name, module in model.named_modules():
        if re.fullmatch(r"model\.(embed_tokens|layers\.\d+\.(self_attn|mlp|block_sparse_moe))", name):
            module.register_forward_hook(hook)
            names.append(name)
    return names


class RouterBalancer:
    """Auxiliary-loss-free load balancing (DeepSeek-V3): after each step, nudge every expert's selection bias
    `e_score_correction_bias` by gamma towards equal load. This is what gives the checkpoint a real correction bias."""

    def __init__(self, model, top_k, gamma=1e-3):
        self.top_k, self.gamma, self.routers = top_k, gamma, []
        for name, module in model.named_modules():
            bias = getattr(module, "e_score_correction_bias", None)
            weight = getattr(module, "weight", None)
            if torch.is_tensor(bias) and torch.is_tensor(weight) and weight.dim() == 2 and weight.shape[0] == bias.numel():
                counts = torch.zeros(bias.numel(), device=bias.device)
                module.register_forward_hook(self._hook(counts), with_kwargs=True)
                self.routers.append((name, module, counts))

    def _hook(self, counts):
        top_k = self.top_k

        def hook(module, args, kwargs, output):
            if not module.training:
                return None
            x = args[0] if args else kwargs.get("hidden_states")
            with torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
                scores = torch.sigmoid(x.reshape(-1, module.weight.shape[1]).float() @ module.weight.float().t())
                chosen = torch.topk(scores + module.e_score_correction_bias.float(), top_k, dim=-1).indices
                counts.add_(torch.bincount(chosen.flatten(), minlength=counts.numel()).float())
            return None

        return hook

    @torch.no_grad()
    def step(self):
        for _, module, counts in self.routers:
            if counts.sum() > 0:
                module.e_score_correction_bias += self.gamma * torch.sign(counts.mean() - counts)
            counts.zero_()

    def describe(self):
        parts = []
        for name, module, _ in self.routers:
            b = module.e_score_correction_bias
            parts.append(f"{name.split('.')[2]}:[{b.min().item():+.3f},{b.max().item():+.3f}]")
        return " ".join(parts)


# ----------------------------------------------------------------------------------------------------------------
# Data and evaluation
# ----------------------------------------------------------------------------------------------------------------

def read_ids(path):
    import numpy as np

    return torch.from_numpy(np.fromfile(str(path), dtype="<i4").astype("int64"))


def validation_windows(train_ids, val_ids):
    """Inputs/targets that predict every validation token once: the context of the first one is the last train
    token (the text runs on), and context restarts every SEQ_LEN tokens."""
    x = torch.cat([train_ids[-1:], val_ids[:-1]])
    y = val_ids
    full = (len(y) // SEQ_LEN) * SEQ_LEN
    batches = [(x[:full].view(-1, SEQ_LEN), y[:full].view(-1, SEQ_LEN))]
    if full < len(y):
        batches.append((x[full:][None], y[full:][None]))
    return batches


@torch.no_grad()
def validation_nll(model, windows, device, autocast, batch=64):
    """Total validation NLL (nats) and the number of tokens it covers."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for xs, ys in windows:
        for i in range(0, xs.shape[0], batch):
            x, y = xs[i:i + batch].to(device), ys[i:i + batch].to(device)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
                logits = model(input_ids=x, use_cache=False).logits
            total += F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum").item()
            count += y.numel()
    model.train(was_training)
    return total, count


# ----------------------------------------------------------------------------------------------------------------
# Reference outputs
# ----------------------------------------------------------------------------------------------------------------

@torch.no_grad()
def greedy(model, prompt, steps):
    """Greedy continuation by full forward passes, with the smallest top-1/top-2 logit gap seen."""
    seq, gaps = list(prompt), []
    for _ in range(steps):
        logits = model(input_ids=torch.tensor([seq]), use_cache=False).logits[0, -1].float()
        top = torch.topk(logits, 2).values
        gaps.append((top[0] - top[1]).item())
        seq.append(int(logits.argmax()))
    return seq[len(prompt):], min(gaps)


def split_runs(text, limit):
    """tokenization_kimi.py's cut of runs of more than `limit` consecutive whitespace or non-whitespace characters."""
    start, run, in_space = 0, 0, text[:1].isspace()
    for i, ch in enumerate(text):
        if ch.isspace() != in_space:
            run, in_space = 1, ch.isspace()
        else:
            run += 1
            if run > limit:
                yield text[start:i]
                start, run = i, 1
    yield text[start:]


def kimi_encode_ordinary(enc, text):
    """tokenization_kimi.py's encode without special tokens: 400,000-character chunks, each cut at long runs, then BPE."""
    ids = []
    for i in range(0, len(text), 400_000):
        for piece in split_runs(text[i:i + 400_000], 25_000):
            ids.extend(enc.encode_ordinary(piece))
    return ids


def tiktoken_cross_check(data, split, corpus_text, pat_str, prompts, checks):
    """Python tiktoken (the Rust BPE core) over the same file and the upstream regex, wrapped as tokenization_kimi.py
    wraps it, must give the C# tool's ids (the tool encodes with the engine's KimiTokenizer)."""
    import base64

    import tiktoken

    ranks = {}
    for line in (data / "tiktoken.model").read_text().splitlines():
        token, rank = line.split(" ")
        ranks[base64.b64decode(token)] = int(rank)
    enc = tiktoken.Encoding(name="kimi-linear-demo", pat_str=pat_str, mergeable_ranks=ranks, special_tokens={})
    cut = split["train_chars"]
    for name, text in (("train", corpus_text[:cut]), ("val", corpus_text[cut:])):
        ids = kimi_encode_ordinary(enc, text)
        ref = read_ids(data / f"{name}.ids").tolist()
        checks.record(f"tiktoken encodes the {name} split to the C# ids", ids == ref, f"{len(ids)} vs {len(ref)} tokens")
    ok = all(kimi_encode_ordinary(enc, p["text"]) == p["ids"] for p in prompts)
    checks.record("tiktoken encodes the prompts to the C# ids", ok, f"{len(prompts)} prompts")


# ----------------------------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="the BPE tool's output: *.ids, split.json, prompts.json, tokenizer files, corpus")
    ap.add_argument("--corpus", type=Path, required=True, help="tinyshakespeare.txt")
    ap.add_argument("--tiny", type=Path, required=True, help="KimiLinear.Tests/Fixtures/tiny (published-format fixture)")
    ap.add_argument("--pat-file", type=Path, required=True, help="JSON with the upstream pre-tokenizer regex under 'pat_str'")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--train-seconds", type=float, default=220.0, help="wall-clock budget of the training loop, evaluations included")
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--min-lr-ratio", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--dropout", type=float, default=0.15)
    ap.add_argument("--eval-every", type=int, default=40)
    ap.add_argument("--patience", type=int, default=6, help="evaluations without improvement before stopping")
    ap.add_argument("--max-steps", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()

    import transformers

    checks = Checks()
    out = args.out
    model_dir = out / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    log_file = open(model_dir / "training_log.txt", "w")

    def tlog(message):
        log(message)
        log_file.write(message + "\n")
        log_file.flush()

    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 evaluations must be float32
    torch.backends.cudnn.allow_tf32 = False
    summary = {"checks": checks.results}
    try:
        split = json.loads((args.data / "split.json").read_text())
        prompts = json.loads((args.data / "prompts.json").read_text())
        corpus_text = open(args.corpus, encoding="utf-8", newline="").read()  # no newline translation: chars as the C# tool counted them
        if len(corpus_text) != split["corpus_chars"]:
            raise Fatal(f"corpus has {len(corpus_text)} chars, split.json says {split['corpus_chars']}")
        train_ids, val_ids = read_ids(args.data / "train.ids"), read_ids(args.data / "val.ids")
        if len(train_ids) != split["train_tokens"] or len(val_ids) != split["val_tokens"]:
            raise Fatal("token files do not match split.json")
        val_chars = split["val_chars"]

        # 1. fixture checks
        check_fixture(args.tiny, checks)
        try:
            pat_str = json.loads(args.pat_file.read_text())["pat_str"]
            tiktoken_cross_check(args.data, split, corpus_text, pat_str, prompts, checks)
        except Fatal:
            raise
        except Exception as e:  # the cross-check is independent evidence, not a prerequisite
            checks.record("tiktoken cross-check ran", False, repr(e))

        # 2. mapping
        tiny_cfg = json.loads((args.tiny / "config.json").read_text())
        cfg = demo_config(tiny_cfg, split)
        vocab = cfg["vocab_size"]
        if int(max(train_ids.max(), val_ids.max())) >= split["bpe_ranks"]:
            raise Fatal("token ids beyond the BPE ranks")
        mapping, hf_config = discover_mapping(cfg, out / "tmp", checks)

        # 3. training
        from transformers import KimiLinearForCausalLM

        model = KimiLinearForCausalLM(copy.deepcopy(hf_config))
        uninitialised = initialise(model)
        if uninitialised:
            log(f"note: left at the library's initialisation: {uninitialised}")
        model.to(device).train()
        n_params = sum(p.numel() for p in model.parameters())
        dropped = add_residual_dropout(model, args.dropout)
        balancer = RouterBalancer(model, cfg["num_experts_per_token"])
        if not balancer.routers:
            checks.record("router balancing hooks attached", False, "no module with e_score_correction_bias and weight found")

        decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "A_log" not in n]
        no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "A_log" not in n)]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=device.type == "cuda")
        horizon = {"steps": args.max_steps}

        def lr_at(step):
            if step < args.warmup:
                return args.lr * (step + 1) / args.warmup
            progress = min(1.0, (step - args.warmup) / max(1, horizon["steps"] - args.warmup))
            return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))

        train_dev = train_ids.to(device)
        windows = validation_windows(train_ids, val_ids)
        offsets = torch.arange(SEQ_LEN + 1, device=device)

        tlog("Kimi Linear demo model: training log")
        tlog(f"date {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; torch {torch.__version__}; transformers {transformers.__version__}; "
             f"device {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}")
        tlog(f"corpus {split['corpus']} (sha256 {split['corpus_sha256']}), {split['corpus_chars']} chars: "
             f"train = first {split['train_chars']} chars -> {split['train_tokens']} tokens; "
             f"validation = last {val_chars} chars -> {split['val_tokens']} tokens ({val_chars / split['val_tokens']:.3f} chars/token)")
        tlog(f"tokenizer: byte-level BPE, {split['bpe_ranks']} ranks learned from the training split; vocab {vocab} (+256 special slots)")
        tlog(f"model: {n_params:,} parameters; layers KDA,KDA,KDA,MLA; hidden 256; KDA 4x64; MLA 4 heads (nope 32, rope 16, v 32, latent 64); "
             f"layer 0 dense SwiGLU 512; layers 1-3 MoE 8 experts x 128, top-2, 1 shared expert, sigmoid router with correction bias")
        tlog(f"training: AdamW lr {args.lr} (warmup {args.warmup}, cosine to {args.min_lr_ratio}x), betas 0.9/0.95, weight decay {args.weight_decay}, "
             f"batch {args.batch} x {SEQ_LEN} tokens, bf16 autocast, residual dropout {args.dropout} on {len(dropped)} modules, "
             f"aux-loss-free router balancing (gamma 1e-3) on {len(balancer.routers)} routers, budget {args.train_seconds:.0f} s")
        tlog(f"validation: every token of the validation split predicted once, {SEQ_LEN}-token windows; nats/char = total NLL / {val_chars} chars")

        def train_step(step):
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            starts = torch.randint(0, len(train_dev) - SEQ_LEN - 1, (args.batch,), device=device)
            chunk = train_dev[starts[:, None] + offsets]
            x, y = chunk[:, :-1], chunk[:, 1:]
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                logits = model(input_ids=x, use_cache=False).logits
            loss = F.cross_entropy(logits.float().reshape(-1, vocab), y.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            balancer.step()
            return loss

        # smoke: three steps and one evaluation, timed
        t0 = time.time()
        losses = [train_step(s).item() for s in range(3)]
        if not all(math.isfinite(v) for v in losses):
            raise Fatal(f"smoke steps gave non-finite loss {losses}")
        checks.record("smoke: first steps run", abs(losses[0] - math.log(vocab)) < 1.5,
                      f"losses {['%.3f' % v for v in losses]} (ln vocab = {math.log(vocab):.3f})")
        if device.type == "cuda":
            torch.cuda.synchronize()
        t1 = time.time()
        for s in range(3, 6):
            train_step(s)
        if device.type == "cuda":
            torch.cuda.synchronize()
        step_time = (time.time() - t1) / 3
        t2 = time.time()
        nll, count = validation_nll(model, windows, device, autocast=True)
        eval_time = time.time() - t2
        if count != len(val_ids):
            raise Fatal(f"validation covered {count} tokens, expected {len(val_ids)}")
        remaining = args.train_seconds - (time.time() - t0)
        per_step = step_time + eval_time / args.eval_every
        horizon["steps"] = max(args.warmup + 10, min(args.max_steps, int(remaining / per_step * 0.92)))
        tlog(f"smoke: {step_time * 1000:.0f} ms/step, evaluation {eval_time:.1f} s, step-6 validation {nll / count:.4f} nats/token; "
             f"schedule set to {horizon['steps']} steps")

        best = {"nll": float("inf"), "step": -1, "state": None}
        since_best, step, run_loss, run_n = 0, 6, 0.0, 0
        while step < horizon["steps"] and time.time() - t0 < args.train_seconds:
            loss = train_step(step)
            step += 1
            run_loss += loss.item() if step % 10 == 0 else 0.0
            run_n += 1 if step % 10 == 0 else 0
            if step % args.eval_every == 0 or step == horizon["steps"]:
                nll, count = validation_nll(model, windows, device, autocast=True)
                improved = nll < best["nll"]
                if improved:
                    best = {"nll": nll, "step": step, "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
                    since_best = 0
                else:
                    since_best += 1
                tlog(f"step {step:5d} | lr {lr_at(step - 1):.2e} | train {run_loss / max(1, run_n):.4f} | "
                     f"val {nll / count:.4f} nats/token, {nll / val_chars:.4f} nats/char{' *' if improved else ''} | "
                     f"bias {balancer.describe()} | {time.time() - t0:.0f} s")
                run_loss, run_n = 0.0, 0
                if since_best >= args.patience:
                    tlog(f"stopping: no improvement in {args.patience} evaluations")
                    break
        if best["state"] is None:
            raise Fatal("no evaluation happened")
        tlog(f"best: step {best['step']}, validation {best['nll'] / len(val_ids):.4f} nats/token, {best['nll'] / val_chars:.4f} nats/char "
             f"(bf16 autocast; trained {step} steps in {time.time() - t0:.0f} s)")
        torch.save({k: (v.float() if ("A_log" in k or "dt_bias" in k) else v.bfloat16()).cpu() for k, v in best["state"].items()},
                   str(out / "best_state.pt"))

        # 4. export in the published format, then reload through transformers and compare
        published = mapping.to_published(best["state"])
        write_checkpoint(model_dir, cfg, published)
        for name in ("tiktoken.model", "tokenizer_config.json"):
            shutil.copy(args.data / name, model_dir / name)
        size = (model_dir / "model.safetensors").stat().st_size
        from safetensors.torch import load_file

        back = load_file(str(model_dir / "model.safetensors"))
        dtype_tag = {torch.bfloat16: "bf16", torch.float32: "f32"}
        layout_ok = set(back) == set(mapping.layout) and all(
            tuple(back[k].shape) == tuple(s) and dtype_tag.get(back[k].dtype) == dt for k, (s, dt) in mapping.layout.items())
        checks.record("written checkpoint has the published names, shapes and dtypes", layout_ok, f"{len(back)} tensors, {size / 2**20:.2f} MiB")

        expected = mapping.to_internal(back)
        reloaded = load_through_transformers(model_dir, checks, "the written checkpoint")
        reloaded_state = reloaded.state_dict()
        for name in mapping.skipped:
            expected[name] = reloaded_state[name].clone()
        differ = [n for n in expected if not torch.equal(expected[n], reloaded_state[n].float())]
        checks.record("transformers reads back exactly the weights written (reverse mapping)", not differ, f"differing: {differ[:8]}")

        fresh = KimiLinearForCausalLM(copy.deepcopy(hf_config)).eval()
        fresh.load_state_dict(expected, strict=True)
        probe_ids = torch.tensor([prompts[3]["ids"]])
        with torch.no_grad():
            a = reloaded(input_ids=probe_ids, use_cache=False).logits.float()
            b = fresh(input_ids=probe_ids, use_cache=False).logits.float()
        checks.record("reloaded checkpoint gives the same logits as the mapped weights", torch.equal(a, b),
                      f"max |diff| {(a - b).abs().max().item():.3e}")
        best_model = KimiLinearForCausalLM(copy.deepcopy(hf_config)).eval()
        best_model.load_state_dict(best["state"], strict=True)
        with torch.no_grad():
            d = best_model.float()(input_ids=probe_ids, use_cache=False).logits.float()
        log(f"bf16 rounding of the weights changes the float32 logits by {rel_err(a, d):.2e} relative (information)")

        # exported checkpoint's validation loss, float32 compute
        nll, count = validation_nll(reloaded.to(device), windows, device, autocast=False)
        reloaded.cpu()
        tlog(f"exported checkpoint: validation {nll / count:.4f} nats/token, {nll / val_chars:.4f} nats/char "
             f"(bf16 weights, float32 compute; {count} tokens, {val_chars} chars, {SEQ_LEN}-token windows)")
        checks.record("validation loss at most 1.8 nats/char", nll / val_chars <= 1.8, f"{nll / val_chars:.4f}")
        summary.update({"val_nats_per_token": nll / count, "val_nats_per_char": nll / val_chars, "best_step": best["step"],
                        "steps": step, "params": n_params, "checkpoint_bytes": size})

        # reference logits: float32 on CPU over the bf16 checkpoint, every position, from an empty state
        tensors, meta_cases = {}, []
        with torch.no_grad():
            for n, p in enumerate(prompts):
                ids = torch.tensor([p["ids"]])
                logits = reloaded(input_ids=ids, use_cache=False).logits[0].float().contiguous()
                if not torch.isfinite(logits).all():
                    raise Fatal(f"non-finite reference logits for case {n}")
                tensors[f"case{n}.input_ids"] = torch.tensor(p["ids"], dtype=torch.int32)
                tensors[f"case{n}.logits"] = logits
                meta_cases.append({"case": n, "tokens": len(p["ids"]), "text": p["text"]})
        candidates = []
        for n in (0, 2, 4):
            generated, gap = greedy(reloaded, prompts[n]["ids"], 16)
            candidates.append((gap, n, generated))
        gap, n, generated = max(candidates)
        tensors["greedy.prompt_ids"] = torch.tensor(prompts[n]["ids"], dtype=torch.int32)
        tensors["greedy.generated_ids"] = torch.tensor(generated, dtype=torch.int32)
        meta = {"cases": json.dumps(meta_cases), "greedy_case": str(n), "greedy_min_top2_gap": f"{gap:.6f}",
                "made_with": f"transformers {transformers.__version__}, torch {torch.__version__}, KimiLinearForCausalLM",
                "compute": "float32 on CPU over the bf16 checkpoint; full forward of each sequence from an empty state"}
        from safetensors.torch import save_file

        save_file(tensors, str(out / "reference.safetensors"), metadata=meta)
        tlog(f"reference: {len(prompts)} cases ({[len(p['ids']) for p in prompts]} tokens); greedy 16 tokens after case {n} "
             f"(smallest top-2 gap {gap:.4f}): {generated}")
        checks.record("greedy continuation is well separated", gap > 1e-3, f"smallest top-1/top-2 gap {gap:.4f}")
    except Fatal as e:
        checks.record("run completed", False, str(e))
    except Exception as e:  # a bug: keep whatever was written, say what broke
        traceback.print_exc()
        checks.record("run completed", False, repr(e))
    finally:
        log_file.close()
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    failed = checks.failed
    log(f"{len(checks.results) - len(failed)} checks passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
