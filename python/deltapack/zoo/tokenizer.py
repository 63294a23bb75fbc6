"""Tokenizers built in code with the ``tokenizers`` library, wrapped as
``transformers.PreTrainedTokenizerFast`` (``<pad>``=0, ``<s>``=1 as BOS, ``</s>``=2 as EOS,
``<unk>``=3), so ``AutoTokenizer.from_pretrained(dir)`` loads them offline.

* ``"char"``: one id per printable ASCII character plus ``\\n`` (100 ids in all); digits are
  single tokens, which is what tiny models need for arithmetic. No training, so trivially
  deterministic.
* an integer: a byte-level BPE of that vocabulary size trained on the base corpus, with digits
  split one per token. ``tokenizers``' BPE trainer gave identical merges across runs and processes.

Both add ``<s>`` in front when called with ``add_special_tokens=True`` (the default).
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
CHARS = ["\n"] + [chr(c) for c in range(32, 127)]


def build_tokenizer(vocab: str | int, docs: list[str] | None = None) -> PreTrainedTokenizerFast:
    if vocab == "char":
        table = {t: i for i, t in enumerate(SPECIALS + CHARS)}
        tok = Tokenizer(models.WordLevel(table, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        tok.decoder = decoders.Fuse()
    else:
        if docs is None:
            raise ValueError("a BPE tokenizer needs the corpus to train on")
        tok = Tokenizer(models.BPE(unk_token=None))
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=int(vocab),
            special_tokens=SPECIALS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(docs, trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
        model_max_length=1 << 30,
        clean_up_tokenization_spaces=False,
    )
