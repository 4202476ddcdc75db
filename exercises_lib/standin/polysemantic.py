"""Plant: a polysemantic layer-1 head in the attn-only-4l stand-in (chapter 3).

Jett, cmathw and StefanHex (2023) found that head 1.4 of TransformerLens's
``attn-only-4l`` does several unrelated things depending on the destination
token: previous-token attention, induction, attention from a newline+indent
token to lines of bigger indentation, and nothing at all (attending to BOS).
This plant gives the stand-in a head with all four, plus the circuits the
head needs:

* a **layer-0 previous-token head** (default 0.7) whose query is the key
  rotated back by one position (the trick of :mod:`.positional`), so it
  attends from position ``i`` to ``i - 1``; its OV circuit copies a 41-dim
  code ``M e`` of the attended token's embedding into a fresh subspace
  ``poly.prev_token``. After layer 0, position ``i`` therefore holds the
  identity of token ``i - 1``.
* the **polysemantic head** (default 1.4). Its attention score is a sum of
  four terms, each in its own head dimensions:

  - *previous token*: the rotation trick again, with the 10 fastest sinusoid
    pairs of the positional embedding (20 dims);
  - *induction* (K-composition): the query reads the code ``M e`` of the
    current token, the key reads ``poly.prev_token``, written by the layer-0
    head: the score is large at sources whose previous token equals the
    current one, larger than the previous-token score, so induction wins when
    an earlier copy exists;
  - *bigger indentation* (2 dims): every newline+indent token of the
    tokenizer (``"\n" + k`` spaces as one token) carries a feature
    ``poly.indent`` and a feature ``poly.depth`` of size proportional to its
    depth ``k``. The query of a newline+indent token reads ``(indent,
    -depth)``, the key ``(depth, indent)``, so the score is proportional to
    ``depth_source - depth_destination`` between two newline+indent tokens
    (and zero otherwise): from a newline+indent token the head attends to the
    earlier lines indented deeper, more than to an induction source;
  - *inactive*: the key reads a ``poly.bos`` feature that only the BOS token
    has, the query reads a ``poly.inactive`` feature that single letters and
    numbers (``' R'``, ``'x'``, ``' 2'``...) carry, so on those tokens the
    head attends to BOS (the write-up found 1.4 inactive on ``' R'``).

  Its OV circuit copies a 60-dim code ``C e`` of the attended token into the
  subspace ``poly.copy_out``, which the unembedding reads back as that token,
  and carries two skip-trigram associations of the kind code models learn:
  the token before the bracket of ``__init__(`` (``'__'`` with GPT-2's
  tokenizer, ``'init'`` with the code tokenizer) raises ``'self'``, and a
  newline+indent source (the ``poly.indent`` feature) raises ``')'``: a
  line dedented after deeper lines often closes a bracket.

The unembedding of the stand-in is rebuilt so that predictions come from
these circuits (it reads ``poly.copy_out``), plus one bigram on the direct
path, bracket of ``__init__(`` -> ``'self'``. The BOS token's embedding is
its own token embedding (scaled by 1/sqrt(2)) plus the ``poly.bos`` feature:
its value vector is a copy code like any token's, so making the head attend
to BOS writes a vector of the usual size (read by the unembedding as
scattered logits; the BOS token itself is never predicted), not nothing.

Bigger indentation needs a tokenizer with newline+indent tokens: the
attn-only-4l stand-in is built with the course's code tokenizer by default
(:func:`exercises_lib.tokenizer.default_tokenizer`). Built with GPT-2's
tokenizer, which spells indentation one space per token, the head has no
newline+indent tokens to attend from or to.

Placement keys: ``prev_layer``, ``prev_head`` (the layer-0 previous-token
head) and ``layer``, ``head`` (the polysemantic head); ``prev_layer`` must be
below ``layer``.

Taught in: chapter 3 (a polysemantic attention head).
"""

from __future__ import annotations

import math
import re

import torch

from exercises_lib.standin import TOKEN_NORM, StandinBuild, register_plant
from exercises_lib.vocab import single_token_id

DEFAULT_PLACEMENT = {"prev_layer": 0, "prev_head": 7, "layer": 1, "head": 4}

#: Sizes of the codes and of the positional part (head dims of 64 in all).
MATCH_DIMS = 41  # token code the layer-0 head moves and the induction QK matches
COPY_DIMS = 60  # token code the polysemantic head copies to the output
PREV_FREQUENCIES = 10  # fastest sinusoid pairs used by the head's previous-token term

#: Attention scores (logits before softmax) the plant aims at.
PREV0_GAP = 7.0  # layer-0 head: score gap between i - 1 and its neighbours
PREV_GAP = 5.0  # polysemantic head: the same gap (its peak is about 10.4)
INDUCTION_SCORE = 20.0  # a perfect induction match
INACTIVE_SCORE = 17.0  # BOS, from an inactive token (aimed high: BOS's token part lowers its LayerNorm scale)
INDENT_SCORE = 6.5  # per space of depth difference between two newline+indent tokens

#: Output sizes.
PREV_WRITE = 0.4  # gain of the layer-0 head's OV (its write has norm ~2.5)
COPY_GAIN = 0.5  # gain of the polysemantic head's OV copy
COPY_LOGIT = 14.0  # logit of the copied token when the head attends only to it
SELF_ASSOCIATION = 0.8  # source before the bracket of ``__init__(`` -> 'self' (logit relative to a copy)
SELF_BIGRAM = 9.8  # direct path: bracket of ``__init__(`` -> 'self' (logit)
CLOSE_ASSOCIATION = 1.2  # newline+indent source -> ')' (logit relative to a copy)
INACTIVE_FEATURE = 1.5  # size of the ``poly.inactive`` feature in the embedding
INDENT_FEATURE = 1.5  # size of the ``poly.indent`` feature of newline+indent tokens
DEPTH_UNIT = 0.05  # size of the ``poly.depth`` feature per space of indentation
#: Frequent tokens of Python source whose codes are made mutually orthogonal
#: (the first MATCH_DIMS of them that are single tokens).
COMMON_CODE_TOKENS = [
    "init", "__(", "def", "return", "\n    ", "\n        ", "\n            ",
    "(", ")", ":", ",", ".", "\n", "\n\n", " ", " =", "=", "__", " __", "init", " def", "self",
    " self", "):", " return", " in", " if", " for", "[", "]", " (", "'", '"', " import", " from",
    " class", "_", " None", " not", " is", " +", " ==", "\t", "#", " #", "()", " else", " or",
]


def _token_basis(build: StandinBuild) -> torch.Tensor:
    """The orthonormal directions [n_tok, d_model] the base gave to token embeddings.

    Read from the layout (the number of directions is the base's choice); an
    SVD of ``W_E`` would give the same subspace, but its basis can change with
    the LAPACK build and thread count, and the plant must be deterministic.
    """
    tok = build.layout._named.get("tok")  # noqa: SLF001 - the layout has no public lookup by name alone
    if tok is None:
        raise RuntimeError("the base weights have no 'tok' directions")
    return tok


def inactive_token_ids(tokenizer) -> list[int]:
    """Tokens on which the stand-in's polysemantic head is inactive: single letters and numbers."""
    pattern = re.compile(r"^\s?([A-Za-z]|[0-9]+)$")
    ids = []
    for token, idx in tokenizer.get_vocab().items():
        text = tokenizer.convert_tokens_to_string([token])
        if pattern.match(text):
            ids.append(idx)
    return sorted(ids)


def indent_token_depths(tokenizer) -> dict[int, int]:
    """Newline+indent tokens of the tokenizer (whitespace only, with a newline) and their depth:
    the spaces after the last newline (a tab counts 4)."""
    out = {}
    for token, idx in tokenizer.get_vocab().items():
        text = tokenizer.convert_tokens_to_string([token])
        if "\n" in text and text.strip(" \t\r\n") == "":
            tail = text.rsplit("\n", 1)[1]
            out[idx] = tail.count(" ") + 4 * tail.count("\t")
    return out


def init_bracket_tokens(tokenizer) -> tuple[str, str]:
    """(the token before the bracket, the bracket token) of ``def __init__(self`` in this tokenizer."""
    toks = tokenizer.tokenize(" __init__(self")
    strs = [tokenizer.convert_tokens_to_string([t]) for t in toks]
    k = max(i for i, t in enumerate(strs) if t.endswith("("))
    return strs[k - 1], strs[k]


def _layer_scale(build: StandinBuild, extra_norm: float) -> float:
    """Typical LayerNorm scale sqrt(d)/|x| of a residual with an extra component of norm ``extra_norm``."""
    d = build.cfg["d_model"]
    token_pos = math.sqrt(d) / build.typical_ln_scale()  # |E + P|
    return math.sqrt(d) / math.sqrt(token_pos**2 + extra_norm**2)


def _plant_rotation(build, layer, head, n_freq, gap, scale) -> float:
    """Previous-token QK from the ``n_freq`` fastest sinusoid pairs; returns the peak score."""
    omega = build.cfg["_pos_omega"][:n_freq]
    amp = build.cfg["_pos_wave_amp"]
    dims = build.layout.head_dims(layer, head, "qk", 2 * n_freq)
    cos_dirs = build.layout.direction("pos.cos", build.cfg["_pos_omega"].shape[0])[:n_freq]
    sin_dirs = build.layout.direction("pos.sin", build.cfg["_pos_omega"].shape[0])[:n_freq]
    d_head = build.cfg["d_head"]
    unit_gap = float((1 - torch.cos(omega)).sum())
    # q_n . k_i = scale^2 * beta * sum_k cos(w_k (n - 1 - i)): the amplitude of
    # the sinusoids cancels (keys and queries divide by it).
    beta = gap * math.sqrt(d_head) / (unit_gap * scale**2)
    W_Q = build.w(f"blocks.{layer}.attn.W_Q")[head]
    W_K = build.w(f"blocks.{layer}.attn.W_K")[head]
    c, sn = torch.cos(omega), torch.sin(omega)
    for k in range(n_freq):
        a, b = dims.start + 2 * k, dims.start + 2 * k + 1
        W_K[:, a] = cos_dirs[k] / amp
        W_K[:, b] = sin_dirs[k] / amp
        W_Q[:, a] = beta * (c[k] * cos_dirs[k] + sn[k] * sin_dirs[k]) / amp
        W_Q[:, b] = beta * (-sn[k] * cos_dirs[k] + c[k] * sin_dirs[k]) / amp
    for name in ("b_Q", "b_K"):
        build.w(f"blocks.{layer}.attn.{name}")[head][dims] = 0.0
    return gap * n_freq / unit_gap


@register_plant(
    "polysemantic",
    models=("attn-only-4l",),
    default_placement=DEFAULT_PLACEMENT,
    description="layer-0 previous-token head and a layer-1 head doing previous-token, induction and inactive",
    order=30,
)
def plant_polysemantic_head(build: StandinBuild, where: dict) -> None:
    L0, H0, L1, H1 = where["prev_layer"], where["prev_head"], where["layer"], where["head"]
    if L0 >= L1:
        raise ValueError(f"the previous-token head ({L0}.{H0}) must be in a layer below {L1}.{H1}")
    d_head = build.cfg["d_head"]
    tok = _token_basis(build)
    M = tok[:MATCH_DIMS]  # [k_m, d]
    C = tok[MATCH_DIMS : MATCH_DIMS + COPY_DIMS]  # [k_c, d]
    n_tok = tok.shape[0]
    prev_dirs = build.layout.direction("poly.prev_token", MATCH_DIMS)
    out_dirs = build.layout.direction("poly.copy_out", COPY_DIMS)
    bos_dir = build.layout.direction("poly.bos", 1)[0]
    inactive_dir = build.layout.direction("poly.inactive", 1)[0]
    indent_dir = build.layout.direction("poly.indent", 1)[0]
    depth_dir = build.layout.direction("poly.depth", 1)[0]
    assoc_dirs = build.layout.direction("poly.associations", 2)  # [self, close]
    W_E = build.w("embed.W_E")
    # Re-draw the token embeddings so that every token's two codes have the
    # same norm (random projections would make some tokens' matches weaker
    # than others); the rest of each embedding keeps the token's norm.
    coords = W_E @ tok.T  # [vocab, n_tok]
    norms = coords.norm(dim=-1, keepdim=True)
    parts = [coords[:, :MATCH_DIMS], coords[:, MATCH_DIMS : MATCH_DIMS + COPY_DIMS], coords[:, MATCH_DIMS + COPY_DIMS :]]
    code_sizes = [TOKEN_NORM * math.sqrt(p.shape[1] / n_tok) for p in parts[:2]]
    rest = (norms**2 - sum(r**2 for r in code_sizes)).clamp_min(0.25).sqrt()
    sizes = code_sizes + [rest]
    # The most common tokens of Python code get mutually orthogonal codes, so
    # they never mistake one another (a real model separates them well too).
    common = list(dict.fromkeys(i for i in (single_token_id(build.tokenizer, w) for w in COMMON_CODE_TOKENS) if i is not None))
    common = common[:MATCH_DIMS]  # as many as the smaller code has dimensions
    for k in range(2):
        q, _ = torch.linalg.qr(parts[k][common].T)  # [code dims, n_common]
        parts[k][common] = q.T * parts[k][common].norm(dim=-1, keepdim=True)
    coords = torch.cat([p / p.norm(dim=-1, keepdim=True) * r for p, r in zip(parts, sizes)], dim=-1)
    W_E[:] = coords @ tok
    w_e_tok = W_E.clone()  # the token part of every embedding, before the features below

    # Embedding features: BOS is its token part and "BOS"; single letters and
    # numbers carry "inactive"; newline+indent tokens carry "indent" and "depth".
    bos = build.tokenizer.bos_token_id
    bos_feature = TOKEN_NORM / math.sqrt(2)
    W_E[bos] = w_e_tok[bos] / math.sqrt(2) + bos_feature * bos_dir
    inactive = [t for t in inactive_token_ids(build.tokenizer) if t != bos]
    W_E[inactive] += INACTIVE_FEATURE * inactive_dir
    indents = {t: d for t, d in indent_token_depths(build.tokenizer).items() if t != bos}
    if indents:
        ids = torch.tensor(sorted(indents))
        depth = torch.tensor([float(indents[t]) for t in sorted(indents)])
        W_E[ids] += INDENT_FEATURE * indent_dir + (DEPTH_UNIT * depth)[:, None] * depth_dir

    # Typical LayerNorm scales: layer-0 inputs, layer-1 inputs (with the write
    # of the layer-0 head), and BOS at layer 1 (position 0 has a large
    # positional component).
    s0 = build.typical_ln_scale()
    code_norm2 = TOKEN_NORM**2 * MATCH_DIMS / n_tok  # E|M e|^2
    prev_write = PREV_WRITE * s0 * math.sqrt(code_norm2)
    s1 = _layer_scale(build, prev_write)
    p0 = build.w("pos_embed.W_pos")[0]
    s_bos = math.sqrt(build.cfg["d_model"]) / math.sqrt(TOKEN_NORM**2 + float(p0.norm()) ** 2)

    # --- Layer-0 previous-token head: QK by rotation, OV copies M e into prev_dirs.
    _plant_rotation(build, L0, H0, build.cfg["_pos_omega"].shape[0], PREV0_GAP, s0)
    ov0 = build.layout.head_dims(L0, H0, "ov", MATCH_DIMS)
    build.w(f"blocks.{L0}.attn.W_V")[H0][:, ov0] = M.T
    build.w(f"blocks.{L0}.attn.b_V")[H0][ov0] = 0.0
    build.w(f"blocks.{L0}.attn.W_O")[H0][ov0, :] = PREV_WRITE * prev_dirs

    # --- Polysemantic head, QK.
    W_Q = build.w(f"blocks.{L1}.attn.W_Q")[H1]
    W_K = build.w(f"blocks.{L1}.attn.W_K")[H1]
    b_Q = build.w(f"blocks.{L1}.attn.b_Q")[H1]
    b_K = build.w(f"blocks.{L1}.attn.b_K")[H1]
    _plant_rotation(build, L1, H1, PREV_FREQUENCIES, PREV_GAP, s1)
    ind = build.layout.head_dims(L1, H1, "qk", MATCH_DIMS)
    # score = a (M x_n).(P x_s) / sqrt(d_head); a perfect match gives
    # (M x_n).(P x_s) ~ s1 |M e|^2 * s1 * PREV_WRITE * s0 (attention ~ 0.95).
    match = s1 * s1 * PREV_WRITE * s0 * 0.95 * code_norm2
    W_Q[:, ind] = (INDUCTION_SCORE * math.sqrt(d_head) / match) * M.T
    W_K[:, ind] = prev_dirs.T
    b_Q[ind] = 0.0
    b_K[ind] = 0.0
    gate = build.layout.head_dims(L1, H1, "qk", 1).start
    gate_match = s1 * INACTIVE_FEATURE * s_bos * bos_feature
    W_Q[:, gate] = (INACTIVE_SCORE * math.sqrt(d_head) / gate_match) * inactive_dir
    W_K[:, gate] = bos_dir
    b_Q[gate] = 0.0
    b_K[gate] = 0.0
    # Bigger indentation: q = a (indent, -depth), k = (depth, indent), so
    # q.k = a s_d s_s INDENT_FEATURE DEPTH_UNIT (depth_s - depth_d).
    dent = build.layout.head_dims(L1, H1, "qk", 2)
    a = INDENT_SCORE * math.sqrt(d_head) / (s1 * s1 * INDENT_FEATURE * DEPTH_UNIT)
    W_Q[:, dent.start] = a * indent_dir
    W_K[:, dent.start] = depth_dir
    W_Q[:, dent.start + 1] = -a * depth_dir
    W_K[:, dent.start + 1] = indent_dir
    b_Q[dent] = 0.0
    b_K[dent] = 0.0

    # --- Polysemantic head, OV: copy C e into out_dirs; associations.
    W_V = build.w(f"blocks.{L1}.attn.W_V")[H1]
    W_O = build.w(f"blocks.{L1}.attn.W_O")[H1]
    b_V = build.w(f"blocks.{L1}.attn.b_V")[H1]
    copy = build.layout.head_dims(L1, H1, "ov", COPY_DIMS)
    W_V[:, copy] = C.T
    b_V[copy] = 0.0
    W_O[copy, :] = COPY_GAIN * out_dirs
    assoc = build.layout.head_dims(L1, H1, "ov", 2)
    before_bracket, bracket = init_bracket_tokens(build.tokenizer)
    (src_id,), (self_id,), (bracket_id,) = build.token_ids([before_bracket]), build.token_ids(["self"]), build.token_ids([bracket])
    e = w_e_tok[src_id]
    W_V[:, assoc.start] = e / e.norm()  # 'self' after the token before the bracket
    W_V[:, assoc.start + 1] = indent_dir  # ')' after newline+indent sources
    b_V[assoc] = 0.0
    W_O[assoc, :] = COPY_GAIN * assoc_dirs

    # --- Unembedding: read the copy code back as tokens, plus the associations
    # and the bigram. At the final LayerNorm (scale s_f) a full-attention copy of
    # token u gives the coordinates s_f * COPY_GAIN * s1 * C e_u along out_dirs.
    copy_norm2 = TOKEN_NORM**2 * COPY_DIMS / n_tok  # E|C e|^2
    head_out = COPY_GAIN * s1 * math.sqrt(copy_norm2)
    s_f = _layer_scale(build, math.sqrt(prev_write**2 + head_out**2))
    unit = s_f * COPY_GAIN * s1  # what one unit read by W_V becomes at the unembedding
    codes = w_e_tok @ C.T  # [vocab, k_c]
    W_U = (COPY_LOGIT / (unit * copy_norm2)) * (out_dirs.T @ codes.T)  # [d, vocab]
    W_U[:, bos] = 0.0  # the BOS token is never predicted
    W_U[:, self_id] += (SELF_ASSOCIATION * COPY_LOGIT / (unit * float(e.norm()))) * assoc_dirs[0]
    (close_id,) = build.token_ids([")"])
    W_U[:, close_id] += (CLOSE_ASSOCIATION * COPY_LOGIT / (unit * INDENT_FEATURE)) * assoc_dirs[1]
    e = w_e_tok[bracket_id]
    W_U[:, self_id] += (SELF_BIGRAM / (s_f * float(e.norm()))) * (e / e.norm())
    build.weights["unembed.W_U"] = W_U.contiguous()
    build.weights["unembed.b_U"] = torch.zeros(build.cfg["d_vocab"])
    build.notes.append(
        f"polysemantic head {L1}.{H1} (previous-token, induction via {L0}.{H0}, bigger indentation on "
        f"{len(indents)} newline+indent tokens, inactive on single letters and numbers), copying to a "
        "rebuilt unembedding"
    )
