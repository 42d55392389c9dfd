"""Build a tiny Qwen3-architecture model with random weights, for testing the vLLM path without a GPU.

Run with the vLLM environment's interpreter (it has torch, transformers and tokenizers)::

    .venv-vllm/bin/python scripts/build_tiny_model.py --out .tiny-model

The model is the same architecture as Cooolder/SCOPE (``Qwen3ForCausalLM``) at toy size; a byte-level BPE
tokenizer is trained on local text (this repository's source and, when present, the questions in
``../shared/data``), with Qwen's chat tokens and a chat template that renders a user turn exactly as
Qwen3's does. Its outputs are noise: tests force the answer format with vLLM's ``structured_outputs``.
Deterministic for given inputs (fixed seed).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def corpus(max_chars: int = 6_000_000) -> Iterator[str]:
    """Local training text: the library's source (it holds the SCOPE prompt), answer-shaped lines and,
    when ``../shared/data`` is there, its benchmark questions (so prompts tokenize to realistic lengths)."""
    for path in sorted((ROOT / "scope_shared").rglob("*.py")):
        yield path.read_text(encoding="utf-8")
    seen = 0
    for path in sorted((ROOT.parent / "shared" / "data").glob("*/anchors.csv.gz")):
        with gzip.open(path, "rt", encoding="utf-8", newline="") as fh:
            for row in csv.DictReader(fh):
                text = row.get("query") or ""
                seen += len(text)
                if seen > max_chars:
                    break
                yield text
    for n in range(0, 4000, 7):
        verdict = "yes" if n % 2 else "no"
        record = f"{{len: {n}, correct: {verdict}}}"
        yield f"Performance: {record}\nPredicted Performance: {record}\n"


def build(out: Path, *, vocab_size: int, seed: int) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL[1:2],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 32768
    fast.save_pretrained(out)

    im_end = tok.token_to_id("<|im_end|>")
    eot = tok.token_to_id("<|endoftext|>")
    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=tok.get_vocab_size(),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,  # vLLM's CPU attention kernels support 32 and up
        max_position_embeddings=32768,
        tie_word_embeddings=True,
        bos_token_id=eot,
        eos_token_id=im_end,
        pad_token_id=eot,
    )
    model = Qwen3ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out)
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": eot, "eos_token_id": [im_end, eot], "pad_token_id": eot}, indent=2)
    )
    n_params = sum(p.numel() for p in model.parameters())
    sys.stdout.write(f"tiny model: {n_params} parameters, vocab {tok.get_vocab_size()}, at {out}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / ".tiny-model")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    build(args.out, vocab_size=args.vocab_size, seed=args.seed)


if __name__ == "__main__":
    main()
