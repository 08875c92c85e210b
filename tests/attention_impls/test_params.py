import pytest
import torch

import attention_impls as ai


@pytest.mark.parametrize(
    "mechanism, params, match",
    [
        ("sliding_window", {"window": -1}, r"window=-1 must be >= 0"),
        ("sliding_window", {"window": [2, -3]}, r"window\[1\] \(right\)=-3 must be >= 0"),
        ("sliding_window", {"window": [1, 2, 3]}, r"window=\[1, 2, 3\] must be an int >= 0 or a pair"),
        ("sliding_window", {"window": 2.5}, r"window=2.5 must be an int"),
        ("sliding_window", {}, r"needs window="),
        ("dilated", {"segment_lengths": [], "dilation_rates": []}, r"segment_lengths=\[\] must be a non-empty"),
        ("dilated", {"segment_lengths": [8, 16], "dilation_rates": [1]}, r"must have the same length"),
        ("dilated", {"segment_lengths": [8, 0], "dilation_rates": [1, 2]}, r"segment_lengths\[1\]=0 must be >= 1"),
        ("dilated", {"segment_lengths": [8], "dilation_rates": [-2]}, r"dilation_rates\[0\]=-2 must be >= 1"),
        ("dilated", {"segment_lengths": [8, 16], "dilation_rates": [2, 4]}, r"leave position 0 of head 1 in no branch.*add a branch with dilation rate 1"),
        ("dilated", {"segment_lengths": [8], "dilation_rates": [1], "segment_length": 3}, r"did you mean"),
        ("dense", {"scale": -1.0}, r"scale=-1.0 must be a positive"),
        ("sliding_window", {"window": 8, "scale": 1e300}, r"scale=1e\+300 must be a positive finite number below"),
        ("dense", {"window": 3}, r"unexpected parameter 'window'"),
    ],
)
def test_bad_parameters_name_the_value_and_what_is_allowed(mechanism, params, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ai.build(mechanism, **params)


def test_unknown_mechanism_and_backend_suggest_close_matches():
    with pytest.raises(ValueError, match=r"mechanism='dilate' is not known \(did you mean 'dilated'\?\)"):
        ai.build("dilate", segment_lengths=[4], dilation_rates=[1])
    with pytest.raises(ValueError, match=r"backend='chunk' is not a sliding_window backend \(did you mean 'chunked'"):
        ai.build("sliding_window", "chunk", window=4)


def test_coverage_is_checked_against_actual_heads_and_positions():
    # rates (1, 3) cover everything; (2, 3) leave head 0, position 1 uncovered
    ai.build("dilated", segment_lengths=[4, 9], dilation_rates=[1, 3])
    with pytest.raises(ValueError, match="no branch"):
        ai.build("dilated", segment_lengths=[4, 9], dilation_rates=[2, 3])


def _qkv(shape=(1, 8, 2, 4)):
    return [torch.randn(shape) for _ in range(3)]


@pytest.mark.parametrize(
    "tensors, match",
    [
        ([torch.randn(8, 2, 4)] * 3, r"q must be 4-D \(batch, seq, heads, head_dim\), got shape \(8, 2, 4\)"),
        # fewer queries than keys is a query block, which needs its position (attention_impls.call)
        ([torch.randn(1, 8, 2, 4), torch.randn(1, 9, 2, 4), torch.randn(1, 9, 2, 4)], r"needs query_offset="),
        ([torch.randn(1, 8, 2, 4), torch.randn(1, 8, 2, 4).double(), torch.randn(1, 8, 2, 4)], r"dtypes differ"),
        ([torch.randn(1, 8, 2, 0)] * 3, r"head_dim=0 must be >= 1"),
        ([torch.randn(1, 0, 2, 4)] * 3, r"seq_len=0 must be >= 1"),
        ([torch.randn(1, 8, 0, 4)] * 3, r"heads=0 must be >= 1"),  # the chunked backend died of SIGFPE on it
        ([torch.ones(1, 8, 2, 4, dtype=torch.long)] * 3, r"floating point"),
    ],
)
def test_bad_tensors_raise_before_any_kernel(tensors, match):
    attn = ai.build("dilated", "gather", segment_lengths=[4], dilation_rates=[1])
    with pytest.raises((ValueError, TypeError), match=match):
        attn(*tensors)
