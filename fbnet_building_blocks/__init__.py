"""FBNet's building blocks, op registry, search spaces, named architectures and model builder."""

from .arch_specs import ARCHS, ArchSpec, load_arch, save_arch
from .fbnet_builder import FBNet, get_model
from .registry import OPS, build_block
from .search_space import CANDIDATE_OPS, SEARCH_SPACES, get_search_space

__all__ = [
    "ARCHS",
    "ArchSpec",
    "CANDIDATE_OPS",
    "FBNet",
    "OPS",
    "SEARCH_SPACES",
    "build_block",
    "get_model",
    "get_search_space",
    "load_arch",
    "save_arch",
]
