"""A tiny Llama checkpoint built offline: how tests and the demo get a model with no hub.

A byte-level BPE tokenizer is trained on instruction text (the template's own words included,
so prompts tokenize compactly), then a small LlamaForCausalLM is initialised from a seed and
saved in fp32 with distinct bos / eos / pad ids. transformers and vLLM both load the folder
with HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Optional

from .templates import build_prompt

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"


def _training_corpus(records: Iterable[dict]) -> Iterable[str]:
    for rec in records:
        yield build_prompt(rec) + rec["output"]


def _default_records(limit: int = 3000) -> list[dict]:
    from .data.builtin import generate_records

    return generate_records(limit, seed=0)


def _records_from_file(path: str, limit: int = 5000) -> list[dict]:
    from .data import load_usable_records

    _, usable, _ = load_usable_records(path)
    return usable[:limit]


def build_tokenizer(records: list[dict], vocab_size: int = 2048):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    # Digits one by one: with multi-digit tokens a tiny model cannot learn parity or compare numbers.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS, UNK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_corpus(records), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    # Prepend BOS like Llama tokenizers do; EOS is added by the training code, not here.
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                                       special_tokens=[(BOS, bos_id)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        model_max_length=1024, padding_side="right", clean_up_tokenization_spaces=False,
    )


def make_tiny_model(out: str | Path, data: Optional[str] = None, seed: int = 0, hidden_size: int = 128,
                    num_layers: int = 2, num_heads: int = 4, vocab_size: int = 2048, max_positions: int = 1024) -> Path:
    """Write a tiny fp32 LlamaForCausalLM with its tokenizer to `out`; returns the folder."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(out)
    records = _records_from_file(data) if data else _default_records()
    tokenizer = build_tokenizer(records, vocab_size=vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    # Written beside the target and renamed into place: a folder that exists is complete.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "tunesweep_tiny.json").write_text(json.dumps(
            {"seed": seed, "hidden_size": hidden_size, "num_layers": num_layers, "num_heads": num_heads,
             "vocab_size": len(tokenizer), "data": data or "builtin:tasks"}, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out
