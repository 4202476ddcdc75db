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
