"""attention_impls.hf inside tiny random Hugging Face models built from configs (nothing downloaded): dense equals
HF's own SDPA path, generation with a cache equals generation without, a left-padded batch equals its rows
alone, training lowers the loss, Mistral's window convention, and clear errors."""

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, MistralConfig  # noqa: E402

import attention_impls.hf as hf  # noqa: E402

DILATED = {"segment_lengths": [4, 8], "dilation_rates": [1, 2]}
VOCAB = 64


@pytest.fixture(scope="module", autouse=True)
def registered():
    return hf.register(dilated=DILATED, longformer={"window": 2, "global_tokens": 1})


def _llama(**extra):
    return LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                       initializer_range=0.3, **extra)  # weights large enough that attention moves the logits


def _mistral(**extra):
    return MistralConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         initializer_range=0.3, **extra)


def _gpt2():
    return GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0,
                      eos_token_id=0, initializer_range=0.3)


def _pair(config, implementation):
    """HF's SDPA model and the same weights under `implementation`, both in eval mode. Each gets its own copy of
    the config: from_config writes the implementation into the config object, which its layers keep reading."""
    torch.manual_seed(0)
    theirs = AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation="sdpa").eval()
    ours = AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation=implementation).eval()
    assert theirs.config._attn_implementation == "sdpa"
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def _ids(batch=2, length=20, seed=1):
    return torch.randint(1, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_register_names_every_mechanism(registered):
    assert registered == [hf.implementation_name(m) for m in hf.MECHANISMS]
    assert "shootout_dilated" in transformers.AttentionInterface()


@pytest.mark.parametrize("config", [_gpt2(), _llama(), _mistral(sliding_window=None)],
                         ids=["gpt2", "llama_grouped_query", "mistral"])
def test_dense_equals_hf_sdpa(config):
    theirs, ours = _pair(config, "shootout_dense")
    ids = _ids()
    torch.testing.assert_close(ours(ids).logits, theirs(ids).logits, atol=1e-5, rtol=0)
    mask = torch.ones_like(ids)
    mask[0, :5] = 0  # left padding through HF's own mask and ours
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    real = mask.bool()
    torch.testing.assert_close(ours(ids, attention_mask=mask, position_ids=position_ids).logits[real],
                               theirs(ids, attention_mask=mask, position_ids=position_ids).logits[real],
                               atol=1e-5, rtol=0)


def test_mistral_window_counts_the_query_itself():
    """HF's sliding_window W = 5 is this library's window 4: equal logits and equal greedy tokens."""
    theirs, ours = _pair(_mistral(sliding_window=5), "shootout_sliding_window")
    ids = _ids(length=24)
    torch.testing.assert_close(ours(ids).logits, theirs(ids).logits, atol=1e-5, rtol=0)
    assert torch.equal(ours.generate(ids, max_new_tokens=8, do_sample=False),
                       theirs.generate(ids, max_new_tokens=8, do_sample=False))


def test_the_pattern_is_not_dense():
    """The dilated model is not silently running dense attention: its logits differ from HF's SDPA."""
    theirs, ours = _pair(_llama(), "shootout_dilated")
    ids = _ids()
    assert (ours(ids).logits - theirs(ids).logits).abs().max() > 1e-3


@pytest.mark.parametrize("config, implementation", [(_llama(), "shootout_dilated"),
                                                    (_mistral(sliding_window=5), "shootout_sliding_window"),
                                                    (_llama(), "shootout_longformer")],
                         ids=["llama_dilated", "mistral_window", "llama_longformer"])
def test_generation_with_a_cache_equals_generation_without(config, implementation):
    _, ours = _pair(config, implementation)
    ids = _ids(length=10)
    cached = ours.generate(ids, max_new_tokens=8, do_sample=False, use_cache=True)
    uncached = ours.generate(ids, max_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("implementation", ["shootout_dilated", "shootout_sliding_window"])
def test_a_left_padded_batch_equals_its_rows_alone(implementation):
    _, ours = _pair(_llama(shootout_attention={"window": 3}) if implementation.endswith("window") else _llama(),
                    implementation)
    ids = _ids(length=12)
    short = ids[1:, :9]
    batch = torch.cat([ids[:1], torch.cat([torch.zeros(1, 3, dtype=torch.long), short], 1)])
    mask = torch.ones_like(batch)
    mask[1, :3] = 0
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = ours(batch, attention_mask=mask, position_ids=position_ids).logits
    torch.testing.assert_close(logits[1, 3:], ours(short).logits[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(logits[0], ours(ids[:1]).logits[0], atol=1e-5, rtol=0)
    options = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)  # no early stop
    generated = ours.generate(batch, attention_mask=mask, **options)
    alone = ours.generate(short, **options)
    assert torch.equal(generated[1, batch.shape[1]:], alone[0, short.shape[1]:])


def test_a_few_training_steps_lower_the_loss_with_dropout():
    config = _llama(attention_dropout=0.1)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="shootout_dilated").train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = _ids(batch=4, length=16)
    losses = []
    for _ in range(8):
        loss = model(ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_parameters_from_the_config_win_over_the_registered_ones():
    _, from_config = _pair(_llama(shootout_attention={"segment_lengths": [2, 4], "dilation_rates": [1, 2]}),
                           "shootout_dilated")
    _, registered = _pair(_llama(), "shootout_dilated")
    ids = _ids()
    assert (from_config(ids).logits - registered(ids).logits).abs().max() > 1e-4


def test_clear_errors():
    with pytest.raises(ValueError, match=r"\['bogus'\]"):
        hf.register(bogus={})
    with pytest.raises((TypeError, ValueError), match="dilation_rates|segment_lengths"):
        hf.register(dilated={"segment_lengths": [4, 8]})
    _, windowed_dense = _pair(_mistral(sliding_window=5), "shootout_dense")
    with pytest.raises(ValueError, match="sliding_window=5"):
        windowed_dense(_ids())
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="needs the sliding_window parameters"):
        AutoModelForCausalLM.from_config(_llama(), attn_implementation="shootout_sliding_window")(_ids())
