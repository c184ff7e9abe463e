"""avdigits' optional text stream: the digit's word with seeded typos (substitution, deletion,
insertion, adjacent swap), one-hot over a-z and padding."""
from __future__ import annotations

import numpy as np

from ...lazy import lazy
from .sources import CLASS_NAMES

torch = lazy("torch")
F = lazy("torch.nn.functional")

ALPHABET = "abcdefghijklmnopqrstuvwxyz"
PAD = len(ALPHABET)                  # index of the padding symbol
TEXT_DIM = len(ALPHABET) + 1         # 27: a-z, pad
TEXT_LEN = 8                         # characters kept (words are 3-5 letters; longer typo'd words are cut)
MAX_WORD = max(len(w) for w in CLASS_NAMES)   # 5: typo decisions drawn per sample
TYPO_OPS = ("substitution", "deletion", "insertion", "swap")


def typo(word: str, hit: np.ndarray, op: np.ndarray, letter: np.ndarray, shift: np.ndarray) -> str:
    """``word`` with a typo at each original character ``i`` where ``hit[i]``, applied in order.

    ``op[i]`` picks the typo: 0 substitution (the letter ``shift[i]`` places further along
    the alphabet, cyclically, so never itself), 1 deletion, 2 insertion (``letter[i]`` after
    the character), 3 swap with the next character (the previous one for the last)."""
    tokens = [(c, i) for i, c in enumerate(word)]           # (character, original position or -1)
    for i in range(len(word)):
        if not hit[i]:
            continue
        pos = next(k for k, t in enumerate(tokens) if t[1] == i)
        kind = int(op[i])
        if kind == 0:
            tokens[pos] = (ALPHABET[(ALPHABET.index(tokens[pos][0]) + int(shift[i])) % 26], i)
        elif kind == 1:
            del tokens[pos]
        elif kind == 2:
            tokens.insert(pos + 1, (ALPHABET[int(letter[i])], -1))
        else:
            other = pos + 1 if pos + 1 < len(tokens) else pos - 1
            if other >= 0:
                tokens[pos], tokens[other] = tokens[other], tokens[pos]
    return "".join(c for c, _ in tokens)


def typo_words(digits: np.ndarray, p: float, rng: np.random.Generator) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The words of ``digits`` with per-character typos of probability ``p``.

    Every sample draws ``MAX_WORD`` decisions whatever its word, so the draws of one sample do
    not depend on the other samples' words. Returns (texts, typos per sample, count per op)."""
    n = len(digits)
    hit = rng.random((n, MAX_WORD)) < p
    op = rng.integers(0, len(TYPO_OPS), (n, MAX_WORD))
    letter = rng.integers(0, 26, (n, MAX_WORD))
    shift = rng.integers(1, 26, (n, MAX_WORD))
    lengths = np.array([len(CLASS_NAMES[d]) for d in digits], dtype=np.int64)
    hit &= np.arange(MAX_WORD)[None, :] < lengths[:, None]      # only the word's own characters
    texts = [typo(CLASS_NAMES[d], hit[i], op[i], letter[i], shift[i]) for i, d in enumerate(digits)]
    ops = np.bincount(op[hit], minlength=len(TYPO_OPS))
    return texts, hit.sum(axis=1), ops


def one_hot_text(texts: list[str]) -> torch.Tensor:
    """(N, TEXT_LEN, TEXT_DIM) float32: one row per character (a-z), then padding rows;
    characters beyond ``TEXT_LEN`` are cut."""
    idx = np.full((len(texts), TEXT_LEN), PAD, dtype=np.int64)
    for i, t in enumerate(texts):
        t = t[:TEXT_LEN]
        idx[i, :len(t)] = [ALPHABET.index(c) for c in t]
    return F.one_hot(torch.from_numpy(idx), TEXT_DIM).float()


def decode_text(x: torch.Tensor) -> str:
    """The string a (TEXT_LEN, TEXT_DIM) one-hot row encodes (padding dropped)."""
    return "".join(ALPHABET[i] for i in x.argmax(-1).tolist() if i != PAD)
