"""A tiny random Llama saved as a Hugging Face folder, with a word-level tokenizer over a small English vocabulary
(whitespace pre-tokenizer, BOS ``<s>``), so that text prompts tokenise to one token per word offline and in
milliseconds: the stand-in for a user's own model folder (`circuits.models.load(folder)`)."""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = ("When Then After While and went to the store park cafe office beach gave a drink ball cup note an email "
         "handed sent passed towel , . Mary John Tom James Sarah Emma Paul Peter Laura Anna Lisa Jane Kate Alice "
         "Rose Bob Carl Ann over is capital of France Paris Berlin").split()


def save_tiny_llama(path: Path, seed: int = 0, n_ctx: int = 32) -> Path:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{word: i for i, word in enumerate(dict.fromkeys(WORDS), 3)}}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=n_ctx,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
