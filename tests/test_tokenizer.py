from exercises_lib.tokenizer import gpt2_tokenizer


def test_gpt2_tokenizer_offline_ids():
    tok = gpt2_tokenizer()
    assert len(tok) == 50257
    assert tok.encode(" I have two hands, my right hand and my") == [314, 423, 734, 2832, 11, 616, 826, 1021, 290, 616]
    assert tok.decode([314, 423, 734]) == " I have two"
    assert tok.bos_token_id == 50256


def test_model_to_tokens_prepends_bos(gpt2_standin):
    toks = gpt2_standin.to_tokens(" I have two hands")
    assert toks[0].tolist() == [50256, 314, 423, 734, 2832]


def test_code_tokenizer_has_the_real_ones_properties():
    """attn-only-4l's real tokenizer (48262 tokens, newline + indentation as one token,
    one token per digit), offline: the course's code tokenizer."""
    from exercises_lib.tokenizer import CODE_TOKENIZER_VOCAB, code_tokenizer

    tok = code_tokenizer()
    assert len(tok) == CODE_TOKENIZER_VOCAB == 48262
    for n in range(4, 41, 4):
        ids = tok.encode("x\n" + " " * n + "y")
        assert len(ids) == 3 and tok.decode(ids[1:2]) == "\n" + " " * n, n
    assert [tok.decode([i]) for i in tok.encode("x = 2024")][-4:] == ["2", "0", "2", "4"]
    text = "def add(a, b):\n    return a + b  # 31 + 11 = 42\n"
    assert tok.decode(tok.encode(text)) == text
    assert tok.bos_token == tok.eos_token == "<|endoftext|>" and tok.bos_token_id == 0
    assert tok.encode("def add") != gpt2_tokenizer().encode("def add")  # not GPT-2's vocabulary


def test_attn_only_standin_with_the_code_tokenizer():
    from exercises_lib.models import build_standin
    from exercises_lib.tokenizer import code_tokenizer

    model = build_standin("attn-only-4l", tokenizer=code_tokenizer(), device="cpu")
    assert model.cfg.d_vocab == 48262 and model.W_E.shape == (48262, 512) and model.W_U.shape == (512, 48262)
    toks = model.to_tokens("def f(x):\n        return x")
    assert toks[0, 0] == 0 and model(toks).shape == (1, toks.shape[1], 48262)
