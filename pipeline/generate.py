"""Write reviews with the language model: the generate stage, and a CLI.

    python -m pipeline.generate                           # the stage: params.yaml's prompts -> reports/samples.{md,jsonl}
    python -m pipeline.generate --prompt "this movie" --max-tokens 60 --temperature 0.8 --top-k 40 --top-p 0.95 --seed 1
    imdb-generate --prompt "the plot" --prompt "i laughed" --num 3

Prompts go through the tokenize stage's own cleaning and tokenization (pipeline.text); words
outside the vocabulary become <unk>. Sampling: temperature (0 = greedy), then top-k, then top-p
(nucleus); <pad> and <bos> are never drawn, <unk> only with --allow-unk, <eos> ends a sample.
The same seed gives the same text. Options left out take their value from params.yaml's
`generate` section.
"""
from __future__ import annotations

import argparse
import json
import sys
import zlib
from pathlib import Path

import torch

from pipeline import paths
from pipeline import text as T
from pipeline.common import Parser, PipelineError, atomic_file, run_main, write_json
from pipeline.model import LanguageModel, load_lm
from pipeline.params import PARAMS_FILE, GenerateParams, check_value, load_params
from pipeline.data import BOS_ID, EOS_ID, PAD_ID, UNK_ID

MODEL = paths.LM
SAMPLES = paths.SAMPLES
SAMPLES_JSONL = paths.SAMPLES_JSONL
METRICS = paths.metrics("generate")


# --- sampling: pure functions of a logits vector ----------------------------------------------


def top_k_mask(logits: torch.Tensor, k: int) -> torch.Tensor:
    """True for the k highest logits (ties at the k-th value kept); k 0 keeps all."""
    if k <= 0 or k >= logits.numel():
        return torch.ones_like(logits, dtype=torch.bool)
    kth = torch.topk(logits, k).values[-1]
    return logits >= kth


def top_p_mask(probs: torch.Tensor, p: float) -> torch.Tensor:
    """True for the smallest set of most probable tokens whose total probability is >= p."""
    if p >= 1.0:
        return probs > 0
    order = torch.argsort(probs, descending=True, stable=True)
    sorted_probs = probs[order]
    before = torch.cumsum(sorted_probs, 0) - sorted_probs  # mass of the tokens ranked above each one
    keep_sorted = before < p  # still short of p before this token: it is needed
    keep_sorted[0] = True
    mask = torch.zeros_like(probs, dtype=torch.bool)
    mask[order[keep_sorted]] = True
    return mask


def next_distribution(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0,
                      banned: list[int] = ()) -> torch.Tensor:
    """The probabilities a token is drawn from: banned ids out, temperature, top-k, top-p, renormalised.

    Temperature 0 puts all mass on the highest logit (greedy); as it tends to 0 the
    distribution tends to that, since logits are shifted by their max before scaling.
    """
    logits = logits.double().clone()
    if banned:
        logits[list(banned)] = float("-inf")
    if temperature <= 0:
        out = torch.zeros_like(logits)
        out[int(torch.argmax(logits))] = 1.0
        return out
    scaled = (logits - logits.max()) / temperature
    scaled = scaled.masked_fill(~top_k_mask(scaled, top_k), float("-inf"))
    probs = torch.softmax(scaled, 0)
    probs = probs.masked_fill(~top_p_mask(probs, top_p), 0.0)
    return probs / probs.sum()


def sample_next(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, generator: torch.Generator,
                banned: list[int] = ()) -> int:
    probs = next_distribution(logits, temperature, top_k, top_p, banned)
    return int(torch.multinomial(probs, 1, generator=generator))


# --- generation ------------------------------------------------------------------------------


@torch.no_grad()
def generate_ids(model: LanguageModel, prompt_ids: list[int], max_tokens: int, temperature: float, top_k: int,
                 top_p: float, seed: int, allow_unk: bool = False) -> list[int]:
    """Continue <bos> + prompt_ids; returns the new ids, stopping before <eos> or at max_tokens."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    banned = [PAD_ID, BOS_ID] + ([] if allow_unk else [UNK_ID])
    features, state = model(torch.tensor([[BOS_ID, *prompt_ids]]))
    out: list[int] = []
    for _ in range(max_tokens):
        logits = model.log_probs(features[:, -1])[0]
        token = sample_next(logits, temperature, top_k, top_p, generator, banned)
        if token == EOS_ID:
            break
        out.append(token)
        features, state = model(torch.tensor([[token]]), state)
    return out


NO_SPACE_BEFORE = {".", ",", "!", "?", ";", ":", ")", "]", "}", "%", "...", "..", "-", "/",
                   "n't", "'s", "'re", "'ve", "'ll", "'d", "'m", "'", "’s", "n’t"}
NO_SPACE_AFTER = {"(", "[", "{", "$", "#", "-", "/"}
JOINED_PAIRS = {("gon", "na"), ("wan", "na"), ("got", "ta"), ("can", "not")}  # spaCy splits these words in two
SENTENCE_END = {".", "!", "?", "..."}


def detokenize(tokens: list[str], capitalize: bool = True) -> str:
    """spaCy tokens back into text: no space before punctuation or clitics (n't, 's), quotes hugged.

    With `capitalize` (for a lowercasing vocabulary), sentences start with a capital and "i" is "I".
    """
    out: list[str] = []
    quote_open = False
    glue_next = True  # no space before the first token
    sentence_start = True
    for i, tok in enumerate(tokens):
        word = tok
        if capitalize and tok.isalpha():
            if tok == "i" or (sentence_start and tok[0].islower()):
                word = tok[0].upper() + tok[1:]
        if tok == '"':
            glue = glue_next or quote_open  # a closing quote hugs the word before it
            glue_after = not quote_open  # an opening quote hugs the word after it
            quote_open = not quote_open
        else:
            prev = tokens[i - 1] if i else None
            glue = glue_next or tok in NO_SPACE_BEFORE or (prev, tok) in JOINED_PAIRS
            glue_after = tok in NO_SPACE_AFTER
        out.append(word if glue else " " + word)
        glue_next = glue_after
        if tok in SENTENCE_END:
            sentence_start = True
        elif tok.isalnum():
            sentence_start = False
    return "".join(out)


def prompt_seed(seed: int, prompt: str) -> int:
    """The generator's seed for one prompt: fixed by (seed, prompt), so a prompt's sample does not
    change with the other prompts or their order, and different prompts do not share draws.
    32 bits, since torch's CPU generator keeps only those."""
    return zlib.crc32(f"{seed}\0{prompt}".encode("utf-8"))


class Writer:
    """A loaded LM with its vocabulary: prompt text in, text out."""

    def __init__(self, model_path: Path, max_chars: int | None = None):
        self.model, ckpt = load_lm(model_path)
        self.itos: list[str] = ckpt["itos"]
        self.stoi = {t: i for i, t in enumerate(self.itos)}
        self.lowercase = bool(ckpt.get("lowercase", True))
        self.max_chars = max_chars
        self._tokenizer = None

    def encode(self, prompt: str) -> list[str]:
        if self._tokenizer is None:
            self._tokenizer = T.load_tokenizer()
        return T.tokenize(self._tokenizer, [T.clean(prompt, self.max_chars)], self.lowercase)[0]

    def write(self, prompt: str, max_tokens: int, temperature: float, top_k: int, top_p: float, seed: int,
              allow_unk: bool = False) -> dict:
        tokens = self.encode(prompt)
        ids = [self.stoi.get(t, UNK_ID) for t in tokens]
        new = generate_ids(self.model, ids, max_tokens, temperature, top_k, top_p, prompt_seed(seed, prompt), allow_unk)
        words = [self.itos[i] for i in new]
        return {"prompt": prompt, "text": detokenize(tokens + words, self.lowercase),
                "continuation": words, "ended": len(new) < max_tokens}


def distinct(samples: list[list[str]], n: int) -> float:
    """Distinct n-grams over all n-grams of the continuations: 1 = no repetition."""
    grams = [tuple(s[i : i + n]) for s in samples for i in range(len(s) - n + 1)]
    return round(len(set(grams)) / len(grams), 4) if grams else 0.0


def run_stage(params: GenerateParams, max_chars: int) -> None:
    if not params.prompts:
        raise PipelineError("generate.prompts is empty: list at least one prompt")
    writer = Writer(MODEL, max_chars)
    rows = [writer.write(p, params.max_tokens, params.temperature, params.top_k, params.top_p, params.seed,
                         params.allow_unk) for p in params.prompts]
    lines = [
        f"# Samples from {MODEL}",
        "",
        f"temperature {params.temperature}, top-k {params.top_k}, top-p {params.top_p}, seed {params.seed}, "
        f"at most {params.max_tokens} tokens (written by `dvc repro generate`)",
        "",
    ]
    for r in rows:
        lines += [f"## {r['prompt']}", "", r["text"], ""]
    with atomic_file(SAMPLES) as tmp:
        tmp.write_text("\n".join(lines), encoding="utf-8")
    with atomic_file(SAMPLES_JSONL) as tmp:
        tmp.write_text("".join(json.dumps({"prompt": r["prompt"], "text": r["text"]}, ensure_ascii=False) + "\n"
                               for r in rows), encoding="utf-8")
    conts = [r["continuation"] for r in rows]
    write_json(METRICS, {
        "samples": len(rows),
        "mean_tokens": round(sum(map(len, conts)) / len(rows), 2),
        "ended_with_eos": sum(r["ended"] for r in rows),
        "distinct_1": distinct(conts, 1),
        "distinct_2": distinct(conts, 2),
    })
    print(f"generate: {len(rows)} samples -> {SAMPLES}, {SAMPLES_JSONL}")


def main(argv: list[str] | None = None) -> None:
    called = Path(sys.argv[0]).name
    ap = Parser(prog=called if called.endswith("-generate") else "text-generate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt", action="append", help="text to continue (repeatable); none = the stage: params' prompts to files")
    ap.add_argument("--max-tokens", type=int, help="new tokens at most")
    ap.add_argument("--temperature", type=float, help="0 = greedy")
    ap.add_argument("--top-k", type=int, help="0 = no top-k cut")
    ap.add_argument("--top-p", type=float, help="1 = no nucleus cut")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--num", type=int, default=1, help="samples per prompt, with seeds seed, seed+1, ...")
    ap.add_argument("--allow-unk", action="store_true", default=None, help="let <unk> be sampled")
    ap.add_argument("--json", action="store_true", help="one JSON object per sample instead of plain text")
    ap.add_argument("--model", type=Path, default=MODEL)
    ap.add_argument("--params", type=Path, default=Path(PARAMS_FILE))
    args = ap.parse_args(argv)

    all_params = load_params("generate", "tokenize", path=args.params)
    params: GenerateParams = all_params["generate"]
    max_chars = all_params["tokenize"].max_chars
    if args.prompt is None:
        sampling = ("max_tokens", "temperature", "top_k", "top_p", "seed", "allow_unk")
        if any(getattr(args, k) is not None for k in sampling) or args.num != 1 or args.json or args.model != MODEL:
            # the stage would silently ignore them
            raise PipelineError("sampling options need --prompt (without one, generate runs the stage on params.yaml's prompts)")
        run_stage(params, max_chars)
        return
    opts = {k: getattr(args, k) if getattr(args, k) is not None else getattr(params, k)
            for k in ("max_tokens", "temperature", "top_k", "top_p", "seed", "allow_unk")}
    for k, v in opts.items():  # the ranges of params.yaml's generate section, finite numbers included
        check_value(GenerateParams, k, v, f"--{k.replace('_', '-')}")
    if args.num < 1:
        raise PipelineError(f"--num must be >= 1, got {args.num}")
    writer = Writer(args.model, max_chars)
    for prompt in args.prompt:
        for i in range(args.num):
            r = writer.write(prompt, **{**opts, "seed": opts["seed"] + i})
            print(json.dumps({"prompt": prompt, "seed": opts["seed"] + i, "text": r["text"]}, ensure_ascii=False)
                  if args.json else r["text"])


def cli() -> None:
    run_main(main)


if __name__ == "__main__":
    cli()
