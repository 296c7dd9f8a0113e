import pytest

from fbnet_building_blocks.block_strings import BlockArgs, decode_block_str, encode_block_str
from fbnet_building_blocks.registry import OPS, build_block, get_op_args, register_op
from fbnet_building_blocks.search_space import CANDIDATE_OPS


@pytest.mark.parametrize(
    "text, args",
    [
        ("skip", BlockArgs("skip")),
        ("ir_k3_e6", BlockArgs("ir", 3, 6, 1, False)),
        ("ir_k5_e1_g2", BlockArgs("ir", 5, 1, 2, False)),
        ("ir_k7_e4_g4_se", BlockArgs("ir", 7, 4, 4, True)),
    ],
)
def test_decode_encode_round_trip(text, args):
    assert decode_block_str(text) == args
    assert encode_block_str(args) == text


@pytest.mark.parametrize(
    "bad", ["", "ir", "ir_k3", "ir_k4_e1", "ir_k3_e0", "conv_k3", "ir_k3_e1_x"]
)
def test_malformed_strings_raise(bad):
    with pytest.raises(ValueError, match="block string"):
        decode_block_str(bad)


def test_paper_aliases():
    assert get_op_args("ir_k3_s2") == BlockArgs("ir", 3, 1, 2, False)
    assert get_op_args("ir_k5_s4") == BlockArgs("ir", 5, 4, 4, False)
    assert set(CANDIDATE_OPS) <= set(OPS)
    assert {"ir_k7_e6", "ir_k3_e6_se", "ir_k5_s2_se"} <= set(OPS)


def test_unknown_op_lists_known_ones():
    with pytest.raises(KeyError, match="unknown op 'ir_k9_e6'.*ir_k3_e1"):
        build_block("ir_k9_e6", 16, 16, 1)


def test_register_op_refuses_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        register_op("ir_k3_e1", "ir_k3_e1")
