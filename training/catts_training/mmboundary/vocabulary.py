"""Confidence statements as words the model has tokens for (``statements.vocabulary: true``).

A word-level model such as the organism (``catts_graph.models.tiny``: byte-level BPE with no
merges, whole words as pieces, bytes as the fallback) spells any word outside its vocabulary byte
by byte: a statement such as "and I am absolutely certain" cost the organism ~25 tokens against
~5 for a described object, and SFT on replies that long wrecked its descriptions (answer accuracy
0.92 -> 0.27). :func:`extend_vocabulary` copies a checkpoint with the statement pools' words added
as whole pieces (new ids after every existing one, so no existing token changes) and the embedding
and output rows grown to match, each new row the mean of the old ones: a new token's logit is then
the mean of the old logits, never the largest, so the copy answers exactly as the model did until
SFT teaches it the statements. A statement costs one token per word.

Only tokenizers of that kind are extended (a BPE model whose ``ignore_merges`` makes any listed
piece one token); a subword tokenizer such as Qwen's already spells these words in a token or two
and is refused with a clear error rather than silently changed.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from catts_graph.statements import STATEMENTS

__all__ = ["extend_vocabulary", "new_pieces", "statement_words"]

MANIFEST = "vocabulary.json"


def statement_words() -> list[str]:
    """Every word of the statement pools, each once, in first-seen order."""
    words: dict[str, None] = {}
    for pool in STATEMENTS.values():
        for phrase in pool:
            for word in phrase.split():
                words.setdefault(word, None)
    return list(words)


def new_pieces(tokenizer_json: dict[str, Any], words: Iterable[str]) -> list[str]:
    """The pre-split pieces of ``" " + word`` (a word in a statement follows a space) that the
    tokenizer's vocabulary lacks, in order, each once."""
    from tokenizers import pre_tokenizers

    vocab = tokenizer_json["model"]["vocab"]
    split = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    pieces: dict[str, None] = {}
    for word in words:
        for piece, _ in split.pre_tokenize_str(" " + word):
            if piece not in vocab:
                pieces.setdefault(piece, None)
    return list(pieces)


def extend_vocabulary(model_path: str | Path, out: str | Path, words: Sequence[str] | None = None) -> Path:
    """A copy of checkpoint ``model_path`` in ``out`` whose tokenizer has each of ``words`` (default:
    :func:`statement_words`) as one token; ``out/vocabulary.json`` lists the pieces added and their
    ids. An ``out`` that already holds the same extension is reused."""
    import torch
    from transformers import AutoModelForImageTextToText

    source, target = Path(model_path), Path(out)
    words = list(words) if words is not None else statement_words()
    tokenizer_file = source / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise ValueError(f"model={str(source)!r}: no tokenizer.json to extend (statements.vocabulary)")
    data = json.loads(tokenizer_file.read_text())
    model = data.get("model", {})
    if model.get("type") != "BPE" or not model.get("ignore_merges") or model.get("merges"):
        raise ValueError(
            f"model={str(source)!r}: statements.vocabulary extends word-level tokenizers (BPE with "
            "ignore_merges and no merges, as the organisms'); this one spells words in subwords already"
        )
    pieces = new_pieces(data, words)
    manifest_path = target / MANIFEST
    stored = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    if stored.get("source") == str(source.resolve()) and stored.get("words") == words:
        return target
    taken = [*model["vocab"].values(), *(token["id"] for token in data.get("added_tokens", []))]
    next_id = max(taken) + 1
    added = {piece: next_id + i for i, piece in enumerate(pieces)}
    # The special tokens join the model's vocabulary at their own ids, so its ids stay contiguous:
    # with a gap, transformers re-numbers the special tokens after the model's vocabulary on load
    # (onto the new words' ids).
    for token in data.get("added_tokens", []):
        model["vocab"].setdefault(token["content"], token["id"])
    model["vocab"].update(added)
    if sorted(model["vocab"].values()) != list(range(len(model["vocab"]))):
        raise ValueError(f"model={str(source)!r}: its token ids are not contiguous; cannot extend them")

    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)
    (target / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False))
    network = AutoModelForImageTextToText.from_pretrained(source, dtype=torch.float32)
    size = network.get_input_embeddings().weight.shape[0]
    wanted = max(size, next_id + len(pieces))
    if wanted > size:
        network.resize_token_embeddings(wanted, mean_resizing=False)
        with torch.no_grad():
            for layer in {
                id(m): m for m in (network.get_input_embeddings(), network.get_output_embeddings())
            }.values():
                if layer is not None:
                    layer.weight[size:] = layer.weight[:size].mean(dim=0)
    network.save_pretrained(target)
    manifest = {"source": str(source.resolve()), "words": words, "added": added, "vocab_size": wanted}
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return target
